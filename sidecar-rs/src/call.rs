//! One tool call from receipt to result. This file is the policy stack: the
//! order below is the order a call meets each stage, and each stage is
//! bounded by the call's deadline.
//!
//! ```text
//! execute ── cancel / panic guard, result + metrics, secret redaction
//!  └ run ─── input bounds (size, depth, select) → parse → input schema → render request
//!     └ shared ── cache hit? → join an identical call in flight (single-flight)?
//!        └ fetch ── rate limits (reject, or wait within the deadline)
//!                   → tool concurrency slot → upstream concurrency slot (wait within the deadline)
//!                   → attempts: circuit breaker → HTTP (attempt timeout) → classify
//!                       → retry? (idempotent, retryable, budget left, backoff or Retry-After fits the deadline)
//!                   → response bounds (depth) → parse → output schema
//!     └ select ── keep only the JSON Pointers the caller asked for
//! ```
//!
//! The deadline is fixed at receipt: min(call timeout_ms, tool timeout, the
//! transport's deadline). Whatever happens, the caller gets exactly one
//! [`ToolResult`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use futures::FutureExt;
use http::HeaderValue;
use serde_json::Value;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::breaker::Outcome as Health;
use crate::cache::{FetchStats, Outcome, SingleFlight};
use crate::error::CallError;
use crate::fleet::Fleet;
use crate::metrics::{status_label, Metrics, UNKNOWN_TOOL_LABEL};
use crate::pb::{Status, Timing, ToolCall, ToolResult};
use crate::quota;
use crate::ratelimit::Caller;
use crate::registry::{Registry, Tool};
use crate::retry::upstream_wait;
use crate::shape;
use crate::telemetry;
use crate::template::RenderedRequest;
use crate::upstream::UpstreamResponse;

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
struct CallContext {
    deadline: Instant,
    budget: Duration,
    /// Estimated LLM tokens, for limits counted in tokens (0 otherwise).
    tokens: f64,
    /// The call's `tenant` metadata, for tenant-keyed limits.
    tenant: String,
}

impl CallContext {
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
    pub async fn execute(
        &self,
        call: ToolCall,
        received: Instant,
        transport_deadline: Option<Instant>,
        cancel: &CancellationToken,
    ) -> ToolResult {
        let mut timing = Timing::default();
        // The tool is pinned for the whole call: a reload swaps the registry,
        // but a call finishes under the config it started with.
        let tool = self.registry.load().get(&call.tool).cloned();
        let span = tracing::info_span!(
            "tool_call",
            tool = %call.tool,
            call_id = %call.call_id,
            agent_id = %call.agent_id,
        );
        if self.tracing {
            let _ = span.set_parent(telemetry::extract(&call.metadata));
        }
        let work = AssertUnwindSafe(self.run(
            &call,
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
            call_id: call.call_id,
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
        if let Some(tool) = &tool {
            if !tool.redactor.is_empty() {
                result.result = tool
                    .redactor
                    .scrub_bytes(std::mem::take(&mut result.result));
                result.error = tool.redactor.scrub_str(std::mem::take(&mut result.error));
            }
        }
        if self.tracing {
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

    /// Input checks, the shared upstream work, then `select`.
    async fn run(
        &self,
        call: &ToolCall,
        tool: Option<Arc<Tool>>,
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
        let mut ctx = CallContext {
            deadline,
            budget,
            tokens: 0.0,
            tenant: call.metadata.get("tenant").cloned().unwrap_or_default(),
        };

        let started = Instant::now();
        shape::check_pointers(&call.select).map_err(CallError::InvalidSelect)?;
        if call.arguments.len() > tool.max_argument_bytes {
            return Err(CallError::ArgumentsTooLarge {
                size: call.arguments.len(),
                limit: tool.max_argument_bytes,
            });
        }
        if shape::exceeds_depth(&call.arguments, tool.max_json_depth) {
            return Err(CallError::ArgumentsTooDeep(tool.max_json_depth));
        }
        let args = parse_arguments(&call.arguments)?;
        let violations = tool.input_schema.violations(&args);
        timing.validation_us = micros(started.elapsed());
        if !violations.is_empty() {
            return Err(CallError::InvalidArguments(violations));
        }
        let Value::Object(object) = &args else {
            unreachable!("parse_arguments returns objects only")
        };
        if tool.rate_limits.counts_tokens() {
            ctx.tokens = estimate_tokens(&call.arguments, object);
        }
        let mut request = tool.request.render(object)?;
        let exported = self.tracing
            && telemetry::inject(&tracing::Span::current().context(), &mut request.headers);
        if !exported {
            // Not exporting spans: still keep the caller's trace connected.
            if let Some(value) = call
                .metadata
                .get("traceparent")
                .and_then(|tp| child_traceparent(tp))
            {
                request.headers.insert("traceparent", value);
            }
        }

        let outcome = self
            .shared(&tool, &call.agent_id, &args, request, &ctx, timing)
            .await;
        timing.attempts = outcome.stats.attempts;
        timing.queued_us = outcome.stats.queued_us;
        timing.upstream_us = outcome.stats.upstream_us;
        timing.validation_us += outcome.stats.validation_us;
        let (status, body) = outcome.result?;
        if call.select.is_empty() {
            return Ok((status, body));
        }
        let document: Value = serde_json::from_slice(&body)
            .map_err(|e| CallError::Internal(format!("validated body no longer parses: {e}")))?;
        let picked = serde_json::to_vec(&shape::select(&document, &call.select))
            .map_err(|e| CallError::Internal(format!("cannot encode selection: {e}")))?;
        Ok((status, Bytes::from(picked)))
    }

    /// The cache, then single-flight, around [`Executor::fetch`].
    async fn shared(
        &self,
        tool: &Arc<Tool>,
        agent_id: &str,
        args: &Value,
        request: RenderedRequest,
        ctx: &CallContext,
        timing: &mut Timing,
    ) -> Outcome {
        if tool.cache.is_none() && !tool.coalesce {
            return self.fetch(tool, agent_id, &request, ctx).await;
        }
        let key = format!("{}\u{0}{}", tool.name, shape::canonical(args));
        let count = |result: &str| {
            self.metrics
                .cache_requests
                .with_label_values(&[&tool.name, result])
                .inc();
        };
        if let Some(cache) = &tool.cache {
            if let Some(hit) = cache.get(&key).await {
                count("hit");
                timing.cache_hit = true;
                return Outcome {
                    result: hit.result,
                    stats: FetchStats::default(),
                };
            }
        }
        let work = {
            let this = self.clone();
            let tool = tool.clone();
            let agent_id = agent_id.to_owned();
            let key = key.clone();
            let leader = CallContext {
                deadline: ctx.deadline,
                budget: ctx.budget,
                tokens: ctx.tokens,
                tenant: ctx.tenant.clone(),
            };
            async move {
                let outcome = this.fetch(&tool, &agent_id, &request, &leader).await;
                if let Some(cache) = &tool.cache {
                    cache.put(key, &outcome).await;
                }
                outcome
            }
            .boxed()
        };
        let (flight, leader) = self.flights.join(key, work);
        count(if leader { "miss" } else { "coalesced" });
        timing.coalesced = !leader;
        match tokio::time::timeout_at(ctx.deadline, flight).await {
            Ok(outcome) => outcome,
            Err(_) => Outcome {
                result: Err(ctx.timeout("waiting for a shared upstream request")),
                stats: FetchStats::default(),
            },
        }
    }

    /// Rate limits, concurrency slots and the attempts loop.
    async fn fetch(
        &self,
        tool: &Tool,
        agent_id: &str,
        request: &RenderedRequest,
        ctx: &CallContext,
    ) -> Outcome {
        let started = Instant::now();
        let mut stats = FetchStats::default();
        let result = self
            .limit_and_send(tool, agent_id, request, ctx, &mut stats, started)
            .await;
        Outcome { result, stats }
    }

    async fn limit_and_send(
        &self,
        tool: &Tool,
        agent_id: &str,
        request: &RenderedRequest,
        ctx: &CallContext,
        stats: &mut FetchStats,
        started: Instant,
    ) -> Result<(u16, Bytes), CallError> {
        let limited = tokio::time::timeout_at(
            ctx.deadline,
            tool.rate_limits.acquire(
                &Caller {
                    tool: &tool.name,
                    agent: agent_id,
                    tenant: &ctx.tenant,
                    upstream: &tool.upstream.origin,
                },
                ctx.tokens,
                ctx.deadline,
            ),
        )
        .await
        .map_err(|_| ctx.timeout("waiting for a rate-limit permit"))?;
        if let Err(CallError::RateLimited { scope, .. }) = &limited {
            self.metrics
                .rate_limited
                .with_label_values(&[tool.name.as_str(), scope])
                .inc();
        }
        let admitted = limited?;
        for scope in &admitted.shadowed {
            self.metrics
                .rate_limit_shadow
                .with_label_values(&[tool.name.as_str(), scope])
                .inc();
        }
        let result = self
            .send_with_retries(tool, request, ctx, stats, started)
            .await;
        if tool.rate_limits.counts_tokens() {
            // Correct the estimate with what the upstream reports it used;
            // a failed call used nothing it reports.
            let used = match &result {
                Ok((_, body)) => used_tokens(body).unwrap_or(ctx.tokens),
                Err(_) => 0.0,
            };
            tool.rate_limits.settle(admitted.charges, used).await;
        }
        result
    }

    /// Concurrency slots, then attempts until one succeeds or retrying is
    /// not allowed, useful or affordable.
    async fn send_with_retries(
        &self,
        tool: &Tool,
        request: &RenderedRequest,
        ctx: &CallContext,
        stats: &mut FetchStats,
        started: Instant,
    ) -> Result<(u16, Bytes), CallError> {
        let _tool_slot = acquire(tool.slots.as_deref(), ctx, "tool").await?;
        let _upstream_slot = acquire(Some(&tool.upstream.slots), ctx, "upstream").await?;
        stats.queued_us = micros(started.elapsed());

        tool.upstream.budget.deposit();
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.hold_for_upstream_quota(tool, ctx).await?;
            let permit =
                tool.upstream
                    .breaker
                    .admit()
                    .map_err(|retry_after| CallError::CircuitOpen {
                        upstream: tool.upstream.origin.clone(),
                        retry_after,
                    })?;
            stats.attempts = attempt;
            let attempt_deadline = tool
                .retry
                .attempt_timeout
                .map_or(ctx.deadline, |t| ctx.deadline.min(Instant::now() + t));
            let sent = Instant::now();
            let response = tokio::time::timeout_at(
                attempt_deadline,
                tool.client.send(request, tool.max_response_bytes),
            )
            .await;
            let elapsed = sent.elapsed();
            stats.upstream_us += micros(elapsed);
            self.metrics
                .upstream_duration
                .with_label_values(&[&tool.upstream.origin])
                .observe(elapsed.as_secs_f64());

            if let Ok(Ok(response)) = &response {
                self.learn_quota(tool, response).await;
            }
            let (error, retryable, upstream_asked) = match response {
                Ok(Ok(response)) if !tool.retry.retries_status(response.status) => {
                    permit.record(if response.status >= 500 {
                        Health::Failure
                    } else {
                        Health::Success
                    });
                    return self.check_response(tool, response, stats);
                }
                Ok(Ok(response)) => {
                    permit.record(if response.status >= 500 {
                        Health::Failure
                    } else {
                        Health::Success
                    });
                    let asked = upstream_wait(&response.headers, SystemTime::now());
                    let error = match self.check_response(tool, response, stats) {
                        Err(CallError::UpstreamStatus { status, body, .. }) => {
                            CallError::UpstreamStatus {
                                status,
                                body,
                                retry_after: asked,
                            }
                        }
                        Err(other) => other,
                        Ok(_) => CallError::Internal("a retryable status passed as OK".into()),
                    };
                    (error, true, asked)
                }
                Ok(Err(e @ CallError::UpstreamUnreachable(_))) => {
                    permit.record(Health::Failure);
                    (e, true, None)
                }
                Ok(Err(e)) => {
                    permit.record(Health::Ignored);
                    return Err(e);
                }
                Err(_) if attempt_deadline < ctx.deadline => {
                    permit.record(Health::Failure);
                    (ctx.timeout("waiting for one upstream attempt"), true, None)
                }
                Err(_) => {
                    permit.record(Health::Failure);
                    return Err(ctx.timeout("waiting for the upstream"));
                }
            };
            if !retryable || attempt >= tool.retry.max_attempts {
                return Err(error);
            }
            let wait = tool
                .retry
                .backoff(attempt)
                .max(upstream_asked.unwrap_or_default());
            if Instant::now() + wait >= ctx.deadline {
                tracing::debug!(tool = %tool.name, attempt, ?wait, "no time left to retry");
                return Err(error);
            }
            if !tool.upstream.budget.withdraw() {
                tracing::debug!(tool = %tool.name, upstream = %tool.upstream.origin, "retry budget exhausted");
                return Err(error);
            }
            self.metrics.retries.with_label_values(&[&tool.name]).inc();
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits out a quota the upstream announced (if the wait fits the
    /// deadline), or refuses with RATE_LIMITED naming the upstream.
    async fn hold_for_upstream_quota(
        &self,
        tool: &Tool,
        ctx: &CallContext,
    ) -> Result<(), CallError> {
        let Some(wait) = tool.upstream.throttled() else {
            return Ok(());
        };
        self.metrics
            .upstream_throttled
            .with_label_values(&[&tool.upstream.origin])
            .inc();
        if Instant::now() + wait >= ctx.deadline {
            self.metrics
                .rate_limited
                .with_label_values(&[tool.name.as_str(), "upstream"])
                .inc();
            return Err(CallError::RateLimited {
                scope: "upstream",
                key: tool.upstream.origin.clone(),
                retry_after: wait,
            });
        }
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// Notes a spent quota announced in `response`, for this sidecar and,
    /// with Redis, for the whole fleet.
    async fn learn_quota(&self, tool: &Tool, response: &UpstreamResponse) {
        let Some(wait) =
            quota::exhausted_for(response.status, &response.headers, SystemTime::now())
        else {
            return;
        };
        tool.upstream.throttle(wait);
        if let Some(fleet) = &self.fleet {
            fleet.publish_throttle(&tool.upstream.origin, wait).await;
        }
    }

    /// Maps the upstream's answer to an outcome: 2xx JSON passing the output
    /// schema is OK (the bytes pass through untouched), anything else an
    /// error.
    fn check_response(
        &self,
        tool: &Tool,
        response: UpstreamResponse,
        stats: &mut FetchStats,
    ) -> Result<(u16, Bytes), CallError> {
        let started = Instant::now();
        let checked = check_response(tool, response.status, response.body);
        stats.validation_us += micros(started.elapsed());
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
        let timing = result.timing.unwrap_or_default();
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
                attempts = timing.attempts,
                cache_hit = timing.cache_hit,
                total_us = timing.total_us,
                "tool call finished"
            );
        }
    }
}

/// A rough token count for an LLM request: about four bytes of prompt per
/// token, plus the completion budget it asks for (or 256).
fn estimate_tokens(raw: &[u8], args: &serde_json::Map<String, Value>) -> f64 {
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| args.get(*k).and_then(Value::as_f64))
        .unwrap_or(256.0);
    (raw.len() as f64 / 4.0).ceil() + completion
}

/// `usage.total_tokens` from an OpenAI-style response.
fn used_tokens(body: &[u8]) -> Option<f64> {
    #[derive(serde::Deserialize)]
    struct Usage {
        total_tokens: f64,
    }
    #[derive(serde::Deserialize)]
    struct Response {
        usage: Usage,
    }
    serde_json::from_slice::<Response>(body)
        .ok()
        .map(|r| r.usage.total_tokens)
}

/// A slot from `slots`, waiting no longer than the deadline allows.
async fn acquire<'a>(
    slots: Option<&'a Semaphore>,
    ctx: &CallContext,
    which: &'static str,
) -> Result<Option<SemaphorePermit<'a>>, CallError> {
    let Some(slots) = slots else { return Ok(None) };
    if let Ok(permit) = slots.try_acquire() {
        return Ok(Some(permit));
    }
    match tokio::time::timeout_at(ctx.deadline, slots.acquire()).await {
        Ok(Ok(permit)) => Ok(Some(permit)),
        Ok(Err(_)) => Err(CallError::Internal("concurrency limiter closed".into())),
        Err(_) => Err(CallError::Overloaded(match which {
            "tool" => "no free slot under this tool's concurrency limit before the deadline",
            _ => "no free slot under the upstream's concurrency limit before the deadline",
        })),
    }
}

/// Parses the arguments: a JSON object (empty bytes mean `{}`). Depth was
/// checked before; serde_json's own recursion limit is a second guard.
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

/// The upstream's answer as an outcome (see [`Executor::check_response`]).
fn check_response(tool: &Tool, status: u16, body: Bytes) -> Result<(u16, Bytes), CallError> {
    let is_blank = body.iter().all(u8::is_ascii_whitespace);
    let too_deep = shape::exceeds_depth(&body, tool.max_json_depth);
    if !(200..300).contains(&status) {
        let json_body = (!is_blank
            && !too_deep
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok())
        .then_some(body);
        return Err(CallError::UpstreamStatus {
            status,
            body: json_body,
            retry_after: None,
        });
    }
    if too_deep {
        return Err(CallError::ResponseNotJson {
            reason: format!("nests deeper than {} levels", tool.max_json_depth),
            status,
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
