//! Sharing upstream work: a cached answer, or an identical call already in
//! flight (single-flight), before this call spends a permit of its own.

use std::sync::Arc;

use futures::FutureExt;
use serde_json::Value;

use super::{CallContext, Executor};
use crate::config::registry::Tool;
use crate::config::template::RenderedRequest;
use crate::json;
use crate::pb::Timing;
use crate::upstream::cache::{FetchStats, Outcome};

impl Executor {
    /// The cache, then single-flight, around [`Executor::fetch`].
    pub(super) async fn shared(
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
        let key = format!("{}\u{0}{}", tool.name, json::canonical(args));
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
