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
use opentelemetry::{KeyValue, StringValue, Value};
use opentelemetry_otlp::WithExportConfig;
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
        let fmt = tracing_subscriber::fmt::layer().with_writer(|| ScrubbedWriter(io::stderr()));
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

/// A log writer (stderr) behind the redactor. The fmt layer formats each
/// event into one buffer and writes it with one `write_all`, so a secret
/// never straddles two writes.
struct ScrubbedWriter<W>(W);

impl<W: io::Write> io::Write for ScrubbedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let redactor = redact::in_force();
        self.0.write_all(&redactor.scrub_slice(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
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
            batch
                .iter_mut()
                .for_each(|span| scrub_span(&redactor, span));
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use opentelemetry::trace::{SpanContext, SpanId, SpanKind};
    use opentelemetry::InstrumentationScope;

    use super::*;
    use crate::config::secrets::Secret;

    const SECRET: &str = "tk/0123+456=789\"abc";

    /// One test sets the process-wide redactor, so both checks live here.
    #[test]
    fn logs_and_spans_leave_through_the_redactor() {
        redact::set_in_force(Arc::new(Redactor::new(&[Secret::new(SECRET)]).unwrap()));

        // A debug event of any crate, JSON-formatted (so the secret arrives
        // JSON-escaped), through the writer the subscriber uses.
        let sink = Arc::new(Mutex::new(Vec::<u8>::new()));
        let writer = {
            let sink = sink.clone();
            move || ScrubbedWriter(SinkWriter(sink.clone()))
        };
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(writer)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "hyper", error = %format!("bad key {SECRET}"), "upstream said");
            tracing::error!(url = %format!("http://h/?k={}", "tk%2F0123%2B456%3D789%22abc"), "failed");
        });
        let logged = String::from_utf8(sink.lock().unwrap().clone()).unwrap();
        assert_eq!(logged.lines().count(), 2, "{logged}");
        assert!(!logged.contains("0123"), "{logged}");
        assert_eq!(logged.matches(redact::MASK).count(), 2, "{logged}");

        // Every string of a span: name, attributes, events, links, status.
        let attr = |v: &str| vec![KeyValue::new("detail", format!("Bearer {v}"))];
        let mut span = SpanData {
            span_context: SpanContext::empty_context(),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: format!("call {SECRET}").into(),
            start_time: SystemTime::now(),
            end_time: SystemTime::now(),
            attributes: attr(SECRET),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: opentelemetry::trace::Status::error(format!("echo {SECRET}")),
            instrumentation_scope: InstrumentationScope::default(),
        };
        span.events.events.push(opentelemetry::trace::Event::new(
            format!("event {SECRET}"),
            SystemTime::now(),
            attr(SECRET),
            0,
        ));
        span.links.links.push(opentelemetry::trace::Link::new(
            SpanContext::empty_context(),
            vec![KeyValue::new(
                "list",
                Value::Array(opentelemetry::Array::String(vec![SECRET.to_owned().into()])),
            )],
            0,
        ));
        scrub_span(&redact::in_force(), &mut span);
        let text = format!("{span:?}");
        assert!(!text.contains("0123"), "{text}");
        assert_eq!(text.matches(redact::MASK).count(), 6, "{text}");
    }

    struct SinkWriter(Arc<Mutex<Vec<u8>>>);

    impl io::Write for SinkWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
