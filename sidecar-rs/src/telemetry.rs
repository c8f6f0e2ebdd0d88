//! Logs and traces.
//!
//! Logs go to stderr as text or JSON (`--log-format`), filtered by
//! `RUST_LOG`. With `--otlp-endpoint`, every tool call is also a span
//! (`tool_call`, with tool, status and attempts) exported over OTLP/gRPC; a
//! call whose metadata carries a W3C `traceparent` joins that trace, and the
//! upstream request carries the call span's context onward.

use std::collections::HashMap;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber. With an OTLP endpoint this must run
    /// inside the tokio runtime (the exporter's batches are sent on it).
    pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> Result<Self, String> {
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let fmt = match format {
            LogFormat::Json => fmt.json().flatten_event(true).boxed(),
            LogFormat::Text => fmt.boxed(),
        };
        let provider = otlp_endpoint
            .map(|endpoint| {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .build()
                    .map_err(|e| format!("--otlp-endpoint {endpoint}: {e}"))?;
                let processor =
                    BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio)
                        .build();
                let resource = opentelemetry_sdk::Resource::builder()
                    .with_service_name("tandem-sidecar")
                    .build();
                Ok::<_, String>(
                    SdkTracerProvider::builder()
                        .with_span_processor(processor)
                        .with_resource(resource)
                        .build(),
                )
            })
            .transpose()?;
        // Spans go to OTLP; the `tool_call` span itself stays out of the logs
        // below INFO-level events.
        let otel = provider.as_ref().map(|p| {
            tracing_opentelemetry::layer()
                .with_tracer(p.tracer("tandem-sidecar"))
                .with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("sidecar", tracing::Level::INFO),
                )
        });
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .with(otel)
            .try_init()
            .map_err(|e| format!("cannot install the log subscriber: {e}"))?;
        Ok(Self { provider })
    }

    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes spans not yet exported.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("sidecar: flushing traces failed: {e}");
            }
        }
    }
}

/// The trace context carried by a call's metadata (`traceparent`,
/// `tracestate`).
pub fn extract(metadata: &HashMap<String, String>) -> opentelemetry::Context {
    struct Meta<'a>(&'a HashMap<String, String>);
    impl Extractor for Meta<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).map(String::as_str)
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(String::as_str).collect()
        }
    }
    TraceContextPropagator::new().extract(&Meta(metadata))
}

/// Writes `cx` into request headers as `traceparent` (and `tracestate`).
/// Returns false when `cx` has no valid span (tracing disabled).
pub fn inject(cx: &opentelemetry::Context, headers: &mut HeaderMap) -> bool {
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return false;
    }
    struct Headers<'a>(&'a mut HeaderMap);
    impl Injector for Headers<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(key),
                HeaderValue::try_from(value),
            ) {
                self.0.insert(name, value);
            }
        }
    }
    TraceContextPropagator::new().inject_context(cx, &mut Headers(headers));
    true
}
