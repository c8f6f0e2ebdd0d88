//! One tool call from receipt to result, in the order a call meets each stage:
//!
//! ```text
//! lookup tool -> parse arguments -> validate (input schema) -> render request
//!   -> rate limits (may wait, never past the deadline)
//!   -> upstream HTTP (bounded by the deadline; body capped)
//!   -> parse + validate response (output schema) -> result
//! ```
//!
//! The deadline is fixed at receipt: min(call timeout_ms, tool timeout, the
//! transport's deadline). Every stage runs inside it. Whatever happens, the
//! caller gets exactly one [`ToolResult`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use http::HeaderValue;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CallError;
use crate::metrics::{status_label, Metrics, UNKNOWN_TOOL_LABEL};
use crate::pb::{Status, Timing, ToolCall, ToolResult};
use crate::registry::{Registry, Tool};
use crate::upstream::Upstream;

/// Executes calls against the current registry. Shared by all streams.
pub struct Executor {
    registry: Arc<ArcSwap<Registry>>,
    upstream: Upstream,
    metrics: Metrics,
}

impl Executor {
    pub fn new(registry: Arc<ArcSwap<Registry>>, upstream: Upstream, metrics: Metrics) -> Self {
        Self {
            registry,
            upstream,
            metrics,
        }
    }

    pub fn registry(&self) -> Arc<Registry> {
        self.registry.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Runs `call` until it completes, `cancel` fires or its deadline passes.
    /// `transport_deadline` is the RPC's own deadline, if it has one. A panic
    /// inside the pipeline becomes an INTERNAL result rather than a lost call.
    pub async fn execute(
        &self,
        call: ToolCall,
        received: Instant,
        transport_deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> ToolResult {
        let mut timing = Timing::default();
        let registry = self.registry.load_full();
        let tool = registry.get(&call.tool).cloned();
        let work = AssertUnwindSafe(self.run(
            &call,
            tool.as_deref(),
            received,
            transport_deadline,
            &mut timing,
        ))
        .catch_unwind();
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(CallError::Cancelled("the call was cancelled")),
            out = work => out.unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(CallError::Internal(format!("call pipeline panicked: {what}")))
            }),
        };
        timing.total_us = micros(received.elapsed());
        let result = ToolResult {
            call_id: call.call_id,
            timing: Some(timing),
            ..Default::default()
        };
        let result = match outcome {
            Ok((status, body)) => ToolResult {
                status: Status::Ok as i32,
                upstream_status: u32::from(status),
                result: body,
                ..result
            },
            Err(e) => e.into_result(result),
        };
        self.record(
            &call.tool,
            &call.agent_id,
            tool.is_some(),
            &result,
            received,
        );
        result
    }

    /// The result for a call refused before it started (admission, envelope
    /// errors), counted like any other.
    pub fn reject(&self, call: ToolCall, error: CallError, received: Instant) -> ToolResult {
        let known = self.registry.load().get(&call.tool).is_some();
        let result = error.into_result(ToolResult {
            call_id: call.call_id,
            timing: Some(Timing {
                total_us: micros(received.elapsed()),
                ..Default::default()
            }),
            ..Default::default()
        });
        self.record(&call.tool, &call.agent_id, known, &result, received);
        result
    }

    /// The pipeline proper; `Ok((http status, JSON body))` on success.
    async fn run(
        &self,
        call: &ToolCall,
        tool: Option<&Tool>,
        received: Instant,
        transport_deadline: Option<Instant>,
        timing: &mut Timing,
    ) -> Result<(u16, Bytes), CallError> {
        let tool = tool.ok_or_else(|| CallError::UnknownTool(call.tool.clone()))?;
        let mut budget = tool.timeout;
        if call.timeout_ms > 0 {
            budget = budget.min(Duration::from_millis(u64::from(call.timeout_ms)));
        }
        let mut deadline = received + budget;
        if let Some(d) = transport_deadline {
            deadline = deadline.min(d);
            budget = deadline.saturating_duration_since(received);
        }
        let timeout = |stage| CallError::Timeout { budget, stage };

        let started = Instant::now();
        let args = parse_arguments(&call.arguments)?;
        let violations = tool.input_schema.violations(&args);
        timing.validation_us = micros(started.elapsed());
        if !violations.is_empty() {
            return Err(CallError::InvalidArguments(violations));
        }
        let Value::Object(args) = args else {
            unreachable!("parse_arguments returns objects only")
        };
        let mut request = tool.request.render(&args)?;
        if let Some(tp) = call.metadata.get("traceparent") {
            if let Ok(value) = HeaderValue::try_from(tp.as_str()) {
                request.headers.insert("traceparent", value);
            }
        }

        tokio::time::timeout_at(deadline, tool.rate_limits.acquire(&call.agent_id, deadline))
            .await
            .map_err(|_| timeout("waiting for a rate-limit permit"))??;
        timing.queued_us = micros(received.elapsed());

        timing.attempts = 1;
        let upstream_started = Instant::now();
        let response = tokio::time::timeout_at(
            deadline,
            self.upstream.send(request, tool.max_response_bytes),
        )
        .await;
        let upstream_elapsed = upstream_started.elapsed();
        timing.upstream_us = micros(upstream_elapsed);
        self.metrics
            .upstream_duration
            .with_label_values(&[tool.request.origin().as_str()])
            .observe(upstream_elapsed.as_secs_f64());
        let response = response.map_err(|_| timeout("waiting for the upstream"))??;

        let started = Instant::now();
        let checked = check_response(tool, response.status, response.body);
        timing.validation_us += micros(started.elapsed());
        checked
    }

    fn record(
        &self,
        tool: &str,
        agent_id: &str,
        known: bool,
        result: &ToolResult,
        received: Instant,
    ) {
        let label = if known { tool } else { UNKNOWN_TOOL_LABEL };
        let status = Status::try_from(result.status).unwrap_or(Status::Unspecified);
        self.metrics
            .calls
            .with_label_values(&[label, status_label(status)])
            .inc();
        self.metrics
            .call_duration
            .with_label_values(&[label])
            .observe(received.elapsed().as_secs_f64());
        // Per-agent usage lives in logs, not metric labels.
        if status == Status::Internal {
            tracing::error!(tool, agent_id, call_id = %result.call_id, error = %result.error, "tool call failed internally");
        } else {
            tracing::debug!(
                tool,
                agent_id,
                call_id = %result.call_id,
                status = status_label(status),
                upstream_status = result.upstream_status,
                total_us = result.timing.as_ref().map_or(0, |t| t.total_us),
                "tool call finished"
            );
        }
    }
}

/// Parses the arguments: a JSON object (empty bytes mean `{}`). serde_json's
/// recursion limit turns absurdly deep nesting into an error, not a stack
/// overflow.
fn parse_arguments(bytes: &[u8]) -> Result<Value, CallError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CallError::MalformedArguments(e.to_string()))?;
    match value {
        Value::Object(_) => Ok(value),
        other => Err(CallError::ArgumentsNotObject(json_type(&other))),
    }
}

/// Maps the upstream's answer to a result: 2xx JSON passing the output schema
/// is OK (the bytes are passed through untouched), everything else an error.
fn check_response(tool: &Tool, status: u16, body: Bytes) -> Result<(u16, Bytes), CallError> {
    let is_blank = body.iter().all(u8::is_ascii_whitespace);
    if !(200..300).contains(&status) {
        let json_body = (!is_blank
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok())
        .then_some(body);
        return Err(CallError::UpstreamStatus {
            status,
            body: json_body,
        });
    }
    let (value, body) = if is_blank {
        (Value::Null, Bytes::from_static(b"null"))
    } else {
        let value = serde_json::from_slice(&body).map_err(|e| CallError::ResponseNotJson {
            reason: e.to_string(),
            status,
        })?;
        (value, body)
    };
    if let Some(schema) = &tool.output_schema {
        let violations = schema.violations(&value);
        if !violations.is_empty() {
            return Err(CallError::InvalidResponse { violations, status });
        }
    }
    Ok((status, body))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments(b"").unwrap().is_object());
        assert!(matches!(
            parse_arguments(b"[1]"),
            Err(CallError::ArgumentsNotObject("an array"))
        ));
        assert!(matches!(
            parse_arguments(b"{nope"),
            Err(CallError::MalformedArguments(_))
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_arguments(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
