//! Attempts: concurrency slots, then one HTTP request after another through
//! the circuit breaker until one succeeds or retrying is not allowed, useful
//! or affordable. Quota signals the upstream sends are learned here.

use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::{micros, CallContext, Executor};
use crate::config::registry::Tool;
use crate::config::template::RenderedRequest;
use crate::error::CallError;
use crate::policy::breaker::Outcome as Health;
use crate::policy::quota;
use crate::policy::retry::upstream_wait;
use crate::upstream::cache::FetchStats;
use crate::upstream::client::UpstreamResponse;
use tower::retry::budget::Budget;

impl Executor {
    /// Concurrency slots, then attempts until one succeeds or retrying is
    /// not allowed, useful or affordable.
    pub(super) async fn send_with_retries(
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
            tool.upstream
                .duration(&self.metrics)
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
                    let asked =
                        upstream_wait(&response.headers, SystemTime::now(), tool.upstream.max_hold);
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
        let Some(wait) = quota::exhausted_for(
            response.status,
            &response.headers,
            SystemTime::now(),
            tool.upstream.max_hold,
        ) else {
            return;
        };
        tool.upstream.throttle(wait);
        if let Some(fleet) = &self.fleet {
            // Boxed: rare, and inline its Redis round trip would size every
            // call's task while it waits on its upstream.
            Box::pin(fleet.publish_throttle(&tool.upstream.origin, wait)).await;
        }
    }
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
