//! Sharing upstream work: a cached answer, or an identical call already in
//! flight (single-flight), before this call spends a permit of its own.

use std::future::Future;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::Value;

use super::{CallContext, Executor};
use crate::config::registry::Tool;
use crate::config::template::RenderedRequest;
use crate::json;
use crate::pb::Timing;
use crate::upstream::cache::{FetchStats, Outcome};

/// The key calls share cached and in-flight work by: the tool and its
/// canonical arguments (key order does not matter). `None` for a tool that
/// shares nothing, so its arguments need not be kept or rendered again.
pub(super) fn key(tool: &Tool, args: &Value) -> Option<String> {
    (tool.cache.is_some() || tool.coalesce)
        .then(|| format!("{}\u{0}{}", tool.name, json::canonical(args)))
}

impl Executor {
    /// The cache, then single-flight (both under `key`, from [`key`]),
    /// around [`Executor::fetch`].
    ///
    /// A plain fn returning an `async move` block, not an async fn: an
    /// async fn keeps a by-value argument twice in its state (the argument,
    /// and the local it is moved to), and `request` is held for as long as
    /// the call waits on its upstream.
    #[allow(clippy::manual_async_fn)] // the async fn form is what costs the copy
    pub(super) fn shared<'a>(
        &'a self,
        tool: &'a Arc<Tool>,
        agent_id: &'a str,
        key: Option<String>,
        request: RenderedRequest,
        ctx: &'a CallContext,
        timing: &'a mut Timing,
    ) -> impl Future<Output = Outcome> + Send + 'a {
        async move {
            let Some(key) = key else {
                return self.fetch(tool, agent_id, &request, ctx).await;
            };
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
                let leader = ctx.clone();
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
    }
}
