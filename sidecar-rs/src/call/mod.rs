//! One tool call from receipt to result. [`Executor::run`] is the pipeline,
//! read top to bottom; each stage lives in its own module and is bounded by
//! the call's deadline.
//!
//! ```text
//! execute ── cancel / panic guard, result + metrics, secret redaction
//!  └ run ─── input: bounds (size, depth, select) → parse → input schema  (input.rs)
//!     │      → render request, propagate the trace                      (trace.rs)
//!     └ shared ── cache hit? → join an identical call in flight?         (shared.rs)
//!        └ fetch ── rate limits (reject, or wait within the deadline)    (limits.rs)
//!                   → tool slot → upstream slot → attempts: upstream quota
//!                     hold → circuit breaker → HTTP (attempt timeout) →
//!                     classify → retry? (idempotent, retryable, budget
//!                     left, backoff or Retry-After fits the deadline)     (attempts.rs)
//!                   → response: status, bounds, parse, output schema      (response.rs)
//!     └ select ── keep only the JSON Pointers the caller asked for        (select.rs)
//! ```
//!
//! The deadline is fixed at receipt: min(call timeout_ms, tool timeout, the
//! transport's deadline). Whatever happens, the caller gets exactly one
//! [`ToolResult`].

mod attempts;
mod input;
mod limits;
mod response;
mod select;
mod shared;
mod trace;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::registry::{Registry, Tool};
use crate::error::CallError;
use crate::metrics::{status_label, Metrics, UNKNOWN_TOOL_LABEL};
use crate::pb::{Status, Timing, ToolCall, ToolResult};
use crate::policy::fleet::Fleet;
use crate::telemetry;
use crate::upstream::cache::SingleFlight;

/// Executes calls against the current registry. Cheap to clone; clones share
/// everything.
#[derive(Clone)]
pub struct Executor {
    registry: Arc<ArcSwap<Registry>>,
    metrics: Metrics,
    flights: Arc<SingleFlight>,
    /// Spans are exported (OTLP): propagate their context upstream.
    tracing: bool,
    /// Shares learned upstream throttles with the fleet.
    fleet: Option<Arc<Fleet>>,
}

/// Per-call facts every stage needs.
#[derive(Clone)]
struct CallContext {
    deadline: Instant,
    budget: Duration,
    /// Estimated LLM tokens, for limits counted in tokens (0 otherwise).
    tokens: f64,
    /// The call's `tenant` metadata, for tenant-keyed limits.
    tenant: String,
}

impl CallContext {
    /// The deadline: min(call timeout_ms, tool timeout, transport deadline).
    fn new(call: &ToolCall, tool: &Tool, received: Instant, transport: Option<Instant>) -> Self {
        let mut budget = tool.timeout;
        if call.timeout_ms > 0 {
            budget = budget.min(Duration::from_millis(u64::from(call.timeout_ms)));
        }
        let mut deadline = received + budget;
        if let Some(d) = transport {
            deadline = deadline.min(d);
            budget = deadline.saturating_duration_since(received);
        }
        Self {
            deadline,
            budget,
            tokens: 0.0,
            tenant: call.metadata.get("tenant").cloned().unwrap_or_default(),
        }
    }

    fn timeout(&self, stage: &'static str) -> CallError {
        CallError::Timeout {
            budget: self.budget,
            stage,
        }
    }
}

impl Executor {
    pub fn new(registry: Arc<ArcSwap<Registry>>, metrics: Metrics) -> Self {
        Self {
            registry,
            metrics,
            flights: Arc::new(SingleFlight::default()),
            tracing: false,
            fleet: None,
        }
    }

    /// Broadcasts learned upstream throttles through `fleet`.
    pub fn with_fleet(mut self, fleet: Option<Arc<Fleet>>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Calls become exported spans joined to the caller's trace.
    pub fn with_tracing(mut self, enabled: bool) -> Self {
        self.tracing = enabled;
        self
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
    ///
    /// The call is borrowed (its `call_id` is taken for the result): the
    /// caller's task holds it, and an async fn keeps a by-value argument
    /// twice in its state, which every call in flight would pay for. For
    /// the same reason this returns an `async move` block rather than being
    /// an async fn: an async fn kept its arguments twice too (32 bytes, the
    /// difference between mimalloc's 2,560- and 3,072-byte classes for the
    /// call's task, see `server::dispatch`).
    #[allow(clippy::manual_async_fn)] // the async fn form is what costs the copy
    pub fn execute<'a>(
        &'a self,
        call: &'a mut ToolCall,
        received: Instant,
        transport_deadline: Option<Instant>,
        cancel: &'a CancellationToken,
    ) -> impl Future<Output = ToolResult> + 'a {
        async move {
            let mut timing = Timing::default();
            // The tool is pinned for the whole call: a reload swaps the registry,
            // but a call finishes under the config it started with.
            let tool = self.registry.load().get(&call.tool).cloned();
            // A span per call costs a formatted set of fields; at `info` nothing
            // logs inside a healthy call (its outcome is one `debug` line with
            // the same fields), so the span exists only when it is exported or
            // when `debug` logging is on.
            let span = if self.tracing {
                let span = tracing::info_span!(
                    "tool_call",
                    tool = %call.tool,
                    call_id = %call.call_id,
                    agent_id = %call.agent_id,
                );
                let _ = span.set_parent(telemetry::extract(&call.metadata));
                span
            } else {
                tracing::debug_span!(
                    "tool_call",
                    tool = %call.tool,
                    call_id = %call.call_id,
                    agent_id = %call.agent_id,
                )
            };
            let work = AssertUnwindSafe(self.run(
                call,
                tool.clone(),
                received,
                transport_deadline,
                &mut timing,
            ))
            .catch_unwind()
            .instrument(span.clone());
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
                call_id: std::mem::take(&mut call.call_id),
                timing: Some(timing),
                ..Default::default()
            };
            let mut result = match outcome {
                Ok((status, body)) => ToolResult {
                    status: Status::Ok as i32,
                    upstream_status: u32::from(status),
                    result: body,
                    ..result
                },
                Err(e) => e.into_result(result),
            };
            self.finish(call, tool.as_deref(), &mut result, received);
            if self.tracing {
                trace::annotate(&span, &result);
            }
            result
        }
    }

    /// The result for a call refused before it started (admission, envelope
    /// errors), counted like any other.
    pub fn reject(&self, mut call: ToolCall, error: CallError, received: Instant) -> ToolResult {
        let tool = self.registry.load().get(&call.tool).cloned();
        let mut result = error.into_result(ToolResult {
            call_id: std::mem::take(&mut call.call_id),
            timing: Some(Timing {
                total_us: micros(received.elapsed()),
                ..Default::default()
            }),
            ..Default::default()
        });
        self.finish(&call, tool.as_deref(), &mut result, received);
        result
    }

    /// What every result goes through before it leaves: the tool's secrets
    /// scrubbed from it, then counted and logged.
    fn finish(
        &self,
        call: &ToolCall,
        tool: Option<&Tool>,
        result: &mut ToolResult,
        received: Instant,
    ) {
        if let Some(tool) = tool {
            tool.redactor.scrub_result(result);
        }
        self.record(&call.tool, &call.agent_id, tool, result, received);
    }

    /// The pipeline: input checks, the shared upstream work, then `select`.
    async fn run(
        &self,
        call: &ToolCall,
        tool: Option<Arc<Tool>>,
        received: Instant,
        transport_deadline: Option<Instant>,
        timing: &mut Timing,
    ) -> Result<(u16, Bytes), CallError> {
        let tool = tool.ok_or_else(|| CallError::UnknownTool(call.tool.clone()))?;
        let mut ctx = CallContext::new(call, &tool, received, transport_deadline);

        let started = Instant::now();
        let args = input::check(&tool, call)?;
        timing.validation_us = micros(started.elapsed());
        let Value::Object(fields) = &args else {
            unreachable!("input::check returns objects only")
        };
        if tool.rate_limits.counts_tokens() {
            ctx.tokens = input::estimate_tokens(&call.arguments, fields);
        }
        // Neither the parsed arguments nor the request are kept in this
        // function's state while the call waits on its upstream: with
        // 10,000 calls in flight each is memory held for nothing (a map
        // node alone is ~0.6 KiB). The request moves into the shared work,
        // and its binding ends with this block, before the await.
        let sharing = {
            let mut request = tool.request.render_call(fields, Some(&call.arguments))?;
            trace::propagate(self.tracing, &call.metadata, &mut request.headers);
            let key = shared::key(&tool, &args);
            drop(args);
            self.shared(&tool, &call.agent_id, key, request, &ctx, timing)
        };
        let outcome = sharing.await;
        timing.attempts = outcome.stats.attempts;
        timing.queued_us = outcome.stats.queued_us;
        timing.upstream_us = outcome.stats.upstream_us;
        timing.validation_us += outcome.stats.validation_us;
        let (status, body) = outcome.result?;
        Ok((status, select::apply(body, &call.select)?))
    }

    fn record(
        &self,
        name: &str,
        agent_id: &str,
        tool: Option<&Tool>,
        result: &ToolResult,
        received: Instant,
    ) {
        let status = Status::try_from(result.status).unwrap_or(Status::Unspecified);
        let elapsed = received.elapsed().as_secs_f64();
        match tool {
            Some(tool) => {
                tool.series.count(&self.metrics, name, status);
                tool.series.duration(&self.metrics, name).observe(elapsed);
            }
            None => {
                let labels = [UNKNOWN_TOOL_LABEL, status_label(status)];
                self.metrics.calls.with_label_values(&labels).inc();
                self.metrics
                    .call_duration
                    .with_label_values(&[UNKNOWN_TOOL_LABEL])
                    .observe(elapsed);
            }
        }
        let timing = result.timing.unwrap_or_default();
        // Per-agent usage lives in logs, not metric labels.
        if status == Status::Internal {
            tracing::error!(tool = name, agent_id, call_id = %result.call_id, error = %result.error, "tool call failed internally");
        } else {
            tracing::debug!(
                tool = name,
                agent_id,
                call_id = %result.call_id,
                status = status_label(status),
                upstream_status = result.upstream_status,
                attempts = timing.attempts,
                cache_hit = timing.cache_hit,
                total_us = timing.total_us,
                "tool call finished"
            );
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most a call's pipeline future may take: 2,264 bytes on
    /// 2026-12-06 (rustc 1.95), 3,232 before the waits that are rare were
    /// boxed and the by-value arguments went. The call's task, which holds
    /// it, has its own bound (`server::dispatch`).
    const MAX_EXECUTE_FUTURE: usize = 2_560;

    /// Every call in flight holds its future for as long as it waits on its
    /// upstream (10,000 at once in scenario 3), and a future is as large as
    /// its largest state. This catches a large wait awaited inline again (a
    /// rate-limit wait, a Redis round trip, a by-value argument that an
    /// async fn keeps twice): box such a wait instead. `cargo +nightly rustc
    /// --lib -- -Zprint-type-sizes` shows where the bytes go.
    #[test]
    fn a_call_in_flight_is_a_small_future() {
        let exec = Executor::new(
            Arc::new(ArcSwap::from_pointee(Registry::default())),
            Metrics::new(),
        );
        let mut call = ToolCall::default();
        let cancel = CancellationToken::new();
        let work = exec.execute(&mut call, Instant::now(), None, &cancel);
        let size = std::mem::size_of_val(&work);
        assert!(
            size <= MAX_EXECUTE_FUTURE,
            "the call pipeline's future grew to {size} bytes (bound {MAX_EXECUTE_FUTURE})"
        );
    }
}
