//! Logs and traces.
//!
//! Logs go to stderr as text or JSON (`--log-format`), filtered by
//! `RUST_LOG`. With `--otlp-endpoint`, every tool call is also a span
//! (`tool_call`, with tool, status and attempts) exported over OTLP/gRPC; a
//! call whose metadata carries a W3C `traceparent` joins that trace, and the
//! upstream request carries the call span's context onward.
//!
//! Credentials never leave through either: every log line (of every crate,
//! at every level) and every exported span passes through the redactor of
//! the config in force ([`redact::in_force`]) on its way out, so a secret
//! that reaches a log field or a span attribute, in any encoding the
//! redactor knows, is masked no matter which code put it there.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::cli::LogFormat;
use crate::config::redact::{self, Redactor};

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
        let fmt = tracing_subscriber::fmt::layer().with_writer(|| ScrubbedStderr);
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
                let processor = BatchSpanProcessor::builder(
                    Scrubbed(exporter),
                    opentelemetry_sdk::runtime::Tokio,
                )
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
        // The default hook prints the panic message straight to stderr, past
        // the redactor: report panics as log events instead.
        std::panic::set_hook(Box::new(|info| {
            let backtrace = std::backtrace::Backtrace::capture();
            tracing::error!(panic = %info, %backtrace, "panicked");
        }));
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

/// Stderr behind the redactor. The fmt layer formats each event into one
/// buffer and writes it with one `write_all`, so a secret never straddles
/// two writes.
struct ScrubbedStderr;

impl io::Write for ScrubbedStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let redactor = redact::in_force();
        io::stderr().lock().write_all(&redactor.scrub_slice(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// A span exporter that scrubs every string of a span (name, attributes,
/// events, links, status) before handing it to the real exporter.
#[derive(Debug)]
struct Scrubbed<E>(E);

impl<E: SpanExporter> SpanExporter for Scrubbed<E> {
    fn export(
        &self,
        mut batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let redactor = redact::in_force();
        if !redactor.is_empty() {
            batch.iter_mut().for_each(|span| scrub_span(&redactor, span));
        }
        self.0.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Masks every secret in the strings of `span`.
pub fn scrub_span(redactor: &Redactor, span: &mut SpanData) {
    scrub_cow(redactor, &mut span.name);
    scrub_attributes(redactor, &mut span.attributes);
    for event in &mut span.events.events {
        scrub_cow(redactor, &mut event.name);
        scrub_attributes(redactor, &mut event.attributes);
    }
    for link in &mut span.links.links {
        scrub_attributes(redactor, &mut link.attributes);
    }
    if let opentelemetry::trace::Status::Error { description } = &mut span.status {
        scrub_cow(redactor, description);
    }
}

fn scrub_cow(redactor: &Redactor, text: &mut Cow<'static, str>) {
    if let Cow::Owned(scrubbed) = redactor.scrub_text(text) {
        *text = Cow::Owned(scrubbed);
    }
}

fn scrub_attributes(redactor: &Redactor, attributes: &mut [KeyValue]) {
    let scrub = |s: &mut StringValue| {
        if let Cow::Owned(scrubbed) = redactor.scrub_text(s.as_str()) {
            *s = StringValue::from(scrubbed);
        }
    };
    for kv in attributes {
        match &mut kv.value {
            Value::String(s) => scrub(s),
            Value::Array(opentelemetry::Array::String(items)) => items.iter_mut().for_each(scrub),
            _ => {}
        }
    }
}
