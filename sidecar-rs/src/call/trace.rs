//! Keeping the caller's trace connected across the sidecar's hop.

use http::{HeaderMap, HeaderValue};
use std::collections::HashMap;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::metrics::status_label;
use crate::pb::{Status, ToolResult};
use crate::telemetry;

/// Adds the trace context to the upstream request: the exported span's when
/// spans are exported (`exporting`), else a child of the caller's
/// `traceparent` so the trace still joins up.
pub(super) fn propagate(
    exporting: bool,
    metadata: &HashMap<String, String>,
    headers: &mut HeaderMap,
) {
    if exporting && telemetry::inject(&tracing::Span::current().context(), headers) {
        return;
    }
    if let Some(value) = metadata
        .get("traceparent")
        .and_then(|tp| child_traceparent(tp))
    {
        headers.insert("traceparent", value);
    }
}

/// Records the call's outcome on its exported span.
pub(super) fn annotate(span: &tracing::Span, result: &ToolResult) {
    let status = Status::try_from(result.status).unwrap_or(Status::Unspecified);
    span.set_attribute("status", status_label(status));
    span.set_attribute(
        "attempts",
        i64::from(result.timing.map_or(0, |t| t.attempts)),
    );
    if status != Status::Ok {
        span.set_status(opentelemetry::trace::Status::error(result.error.clone()));
    }
}

/// The W3C `traceparent` for the upstream request: same trace id and flags,
/// a fresh parent id for the sidecar's hop. Malformed input is dropped.
fn child_traceparent(incoming: &str) -> Option<HeaderValue> {
    let parts: Vec<&str> = incoming.trim().split('-').collect();
    let [version, trace_id, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || !hex(trace_id, 32) || !hex(parent, 16) || !hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') {
        return None;
    }
    let span_id = loop {
        let id = fastrand::u64(..);
        if id != 0 {
            break id;
        }
    };
    HeaderValue::try_from(format!("00-{trace_id}-{span_id:016x}-{flags}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_keeps_trace_id_with_a_new_parent() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(tp).unwrap();
        let child = child.to_str().unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, tp);
        assert!(child_traceparent("garbage").is_none());
        assert!(
            child_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
    }
}
