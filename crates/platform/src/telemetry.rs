//! Logs, request and correlation ids, and Prometheus metrics.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::traces::TraceExport;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const CORRELATION_ID: HeaderName = HeaderName::from_static("x-correlation-id");

/// Installs the global log subscriber, JSON or compact (`RUST_LOG` filters; default `info`),
/// and, when trace export is on, the layer that exports spans. Idempotent.
pub fn init_logging(json: bool, export: Option<&TraceExport>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,async_nats=warn"));
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let format = if json {
        format
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        format.compact().boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .with(export.map(TraceExport::layer))
        .try_init();
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("mercato_http_request_duration_seconds".to_owned()),
                    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder was installed first (only possible in tests): render ours anyway.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// The ids that tie a request to its logs and to the events it causes.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    /// Taken from `X-Correlation-Id` when the caller sent a sane one, else the request id.
    pub correlation_id: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestIds {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut http::request::Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<RequestIds>().cloned().unwrap_or_else(|| {
            let id = crate::id::new_id().to_string();
            RequestIds {
                request_id: id.clone(),
                correlation_id: id,
            }
        }))
    }
}

tokio::task_local! {
    static CORRELATION: String;
}

/// The correlation id of the request this task is serving, for calls it makes to other
/// services (the id then travels on to the events they write).
pub fn current_correlation_id() -> Option<String> {
    CORRELATION.try_with(Clone::clone).ok()
}

/// Runs `work` with `correlation_id` as the task's correlation id (what a consumer does with
/// the id its event carries), so calls it makes to other services pass it on.
pub async fn with_correlation_id<F: std::future::Future>(correlation_id: String, work: F) -> F::Output {
    CORRELATION.scope(correlation_id, work).await
}

fn sane_id(value: Option<&HeaderValue>) -> Option<String> {
    let raw = value?.to_str().ok()?;
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| raw.to_owned())
}

/// Middleware: assigns request and correlation ids, logs one line per request (method, route,
/// status, latency — never headers, query strings or bodies) and records the HTTP metrics.
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = sane_id(request.headers().get(&REQUEST_ID)).unwrap_or_else(|| crate::id::new_id().to_string());
    let correlation_id = sane_id(request.headers().get(&CORRELATION_ID)).unwrap_or_else(|| request_id.clone());
    let ids = RequestIds {
        request_id: request_id.clone(),
        correlation_id: correlation_id.clone(),
    };
    request.extensions_mut().insert(ids);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!("request", %request_id, %correlation_id, method = %method, route = %route);
    crate::traces::continue_from_headers(&span, request.headers());
    let mut response = CORRELATION
        .scope(correlation_id.clone(), next.run(request).instrument(span.clone()))
        .await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request finished");
    });
    let labels = [
        // A fixed set: hyper accepts any method name, and each would be a new series forever.
        ("method", metric_method(&method).to_owned()),
        ("route", route.clone()),
        ("status", status.to_string()),
    ];
    metrics::counter!("mercato_http_requests_total", &labels).increment(1);
    metrics::histogram!("mercato_http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
    if status >= 500 {
        metrics::counter!("mercato_http_errors_total", &labels).increment(1);
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_str(&correlation_id) {
        headers.insert(CORRELATION_ID, value);
    }
    response
}

fn metric_method(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics` body.
pub fn render_metrics() -> impl IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics_handle().render(),
    )
}
