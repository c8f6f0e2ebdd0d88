//! Rate limits: a call takes a permit from every limit of its tool (or waits
//! for one within its deadline) before it may reach the upstream; token
//! limits are settled with the usage the upstream reports.

use bytes::Bytes;
use tokio::time::Instant;

use super::{CallContext, Executor};
use crate::config::registry::Tool;
use crate::config::template::RenderedRequest;
use crate::error::CallError;
use crate::policy::ratelimit::{Admitted, Caller};
use crate::upstream::cache::{FetchStats, Outcome};

impl Executor {
    /// Rate limits, concurrency slots and the attempts loop: the work one
    /// upstream request does, shared by every call that joined it.
    pub(super) async fn fetch(
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
        // Boxed, and only for a tool with limits: inline, the wait (over a
        // KiB with its Redis round trip) would size every call's task for
        // as long as the call waits on its upstream.
        let admitted = {
            let limited = if tool.rate_limits.is_empty() {
                Ok(Admitted::default())
            } else {
                Box::pin(tokio::time::timeout_at(
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
                ))
                .await
                .map_err(|_| ctx.timeout("waiting for a rate-limit permit"))?
            };
            if let Err(CallError::RateLimited { scope, .. }) = &limited {
                self.metrics
                    .rate_limited
                    .with_label_values(&[tool.name.as_str(), scope])
                    .inc();
            }
            limited?
        };
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
            Box::pin(tool.rate_limits.settle(admitted.charges, used)).await;
        }
        result
    }
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
