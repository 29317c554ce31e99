//! Optional trace export by OTLP (`telemetry.otlp_endpoint`), and the W3C trace context that
//! ties one request's spans together across processes and events.
//!
//! Off by default: no span leaves the process and nothing below costs more than a flag read.
//! Once [`TraceExport::start`] has run:
//! - every `request` span (the HTTP middleware) and `event` span (a consumer handling an
//!   event) is exported, in batches, to `<endpoint>/v1/traces` as OTLP protobuf;
//! - a request that carries a `traceparent` header continues its caller's trace
//!   ([`continue_from_headers`]), and calls to other services and the gateway's proxied requests
//!   carry the current one ([`inject`]);
//! - an event records the trace of the work that wrote it (`Event::traceparent`, the
//!   CloudEvents distributed-tracing attribute), and the consumer's span continues it
//!   ([`continue_from`]), so a checkout's trace runs from the request through every consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::TelemetryConfig;

static EXPORTING: AtomicBool = AtomicBool::new(false);
static TRUST_INCOMING: AtomicBool = AtomicBool::new(false);

/// Whether spans are being exported (and trace context propagated).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The export pipeline: the tracer provider whose batches go to the collector. Keep it for the
/// process's life and call [`TraceExport::shutdown`] before exiting, so the last spans are sent.
#[derive(Debug, Clone)]
pub struct TraceExport {
    provider: SdkTracerProvider,
}

impl TraceExport {
    /// Builds the exporter for `config` (`None` when no endpoint is set). `edge`: this process
    /// takes requests from the public (the all-in-one server, the gateway), so it continues an
    /// incoming trace only when `telemetry.trust_incoming_traceparent` says so. Must run inside
    /// a Tokio runtime: the exports are sent from it.
    pub fn start(config: &TelemetryConfig, default_service: &str, edge: bool) -> anyhow::Result<Option<Self>> {
        let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        let base = reqwest::Url::parse(endpoint.trim())
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .ok_or_else(|| {
                anyhow::anyhow!("telemetry.otlp_endpoint must be an http(s) URL such as http://collector:4318")
            })?;
        if !(0.0..=1.0).contains(&config.sample_ratio) {
            anyhow::bail!("telemetry.sample_ratio must be between 0.0 and 1.0");
        }
        let traces = format!("{}/v1/traces", base.as_str().trim_end_matches('/'));
        let client = ExportClient {
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("trace export needs a Tokio runtime"))?,
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(traces)
            .with_protocol(Protocol::HttpBinary)
            .with_timeout(Duration::from_secs(10))
            .build()?;
        let service = config
            .service_name
            .clone()
            .unwrap_or_else(|| default_service.to_owned());
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sample_ratio,
            ))))
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        trust_incoming(!edge || config.trust_incoming_traceparent);
        EXPORTING.store(true, Ordering::Relaxed);
        Ok(Some(Self { provider }))
    }

    /// The layer that turns `tracing` spans into exported spans.
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
    where
        S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("mercato"))
    }

    /// Sends what is buffered now. Blocks until the exporter is done, and the export runs on
    /// the runtime: call it from a blocking thread (`tokio::task::spawn_blocking`), never from
    /// a current-thread runtime's own thread.
    pub fn flush(&self) {
        if let Err(err) = self.provider.force_flush() {
            tracing::warn!(error = %err, "trace export flush failed");
        }
    }

    /// Sends what is buffered and stops. Blocks: call it from a blocking thread
    /// (`tokio::task::spawn_blocking`) while the runtime still runs, since the sends go
    /// through it.
    pub fn shutdown(&self) {
        EXPORTING.store(false, Ordering::Relaxed);
        if let Err(err) = self.provider.shutdown() {
            tracing::warn!(error = %err, "trace export shutdown failed");
        }
    }
}

/// Sends the exporter's requests with the platform's reqwest on the application's runtime
/// (the batch processor runs on a thread of its own, outside any runtime).
#[derive(Debug)]
struct ExportClient {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait]
impl opentelemetry_http::HttpClient for ExportClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let response = http
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = sent.await??;
        let mut response = http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Whether requests' `traceparent` is trusted (see [`TraceExport::start`]).
pub fn trust_incoming(trusted: bool) {
    TRUST_INCOMING.store(trusted, Ordering::Relaxed);
}

/// Makes `span` continue the trace named by `headers`' `traceparent`, if any and trusted.
pub fn continue_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    if exporting() && TRUST_INCOMING.load(Ordering::Relaxed) && headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` continue the trace of `traceparent` (an event's), if any.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let (true, Some(traceparent)) = (exporting(), traceparent) {
        let carrier = HashMap::from([("traceparent".to_owned(), traceparent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
}

/// Writes the current span's trace context into `headers` (`traceparent`, `tracestate`),
/// dropping any the request came with: what goes on is this process's trace, or none.
pub fn inject(headers: &mut http::HeaderMap) {
    headers.remove("traceparent");
    headers.remove("tracestate");
    if exporting() {
        let context = tracing::Span::current().context();
        TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    }
}

/// The current span's `traceparent`, for an event written inside it.
pub fn current_traceparent() -> Option<String> {
    if !exporting() {
        return None;
    }
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}
