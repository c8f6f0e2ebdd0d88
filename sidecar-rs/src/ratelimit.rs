//! Per-tool rate limits (GCRA, via `governor`), checked before the upstream is
//! called.
//!
//! A tool can have several limits; a call must pass all of them, in the order
//! configured. Per-agent limits should come first: a permit taken from an
//! earlier limit is not returned when a later one refuses, and it is better
//! that an agent over its own budget wastes its own permits than the shared
//! ones.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::time::Instant;

use crate::config::{LimitScope, OnLimit, RateLimitSpec};
use crate::error::CallError;
use crate::pb;

/// The compiled limits of one tool.
#[derive(Debug, Default)]
pub struct RateLimits {
    limits: Vec<Limit>,
}

#[derive(Debug)]
struct Limit {
    spec: RateLimitSpec,
    burst: u32,
    state: State,
}

#[derive(Debug)]
enum State {
    /// One bucket shared by every agent.
    Tool(DefaultDirectRateLimiter),
    /// A bucket per agent. Idle agents are pruned by [`RateLimits::prune`].
    AgentTool(DefaultKeyedRateLimiter<String>),
}

impl RateLimits {
    /// Compiles `specs`; errors are `(field, message)`.
    pub fn new(specs: &[RateLimitSpec]) -> Result<Self, (String, String)> {
        let mut limits = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let field = |name: &str| format!("rate_limits[{i}].{name}");
            let rate = NonZeroU32::new(spec.rate)
                .ok_or_else(|| (field("rate"), "must be at least 1".to_owned()))?;
            let burst = NonZeroU32::new(spec.burst.unwrap_or(spec.rate))
                .ok_or_else(|| (field("burst"), "must be at least 1".to_owned()))?;
            let quota = Quota::with_period(spec.per / rate.get())
                .ok_or_else(|| {
                    (
                        field("per"),
                        format!("{:?} / {} leaves no time between permits", spec.per, rate),
                    )
                })?
                .allow_burst(burst);
            let state = match spec.scope {
                LimitScope::Tool => State::Tool(DefaultDirectRateLimiter::direct(quota)),
                LimitScope::AgentTool => State::AgentTool(DefaultKeyedRateLimiter::keyed(quota)),
            };
            limits.push(Limit {
                spec: spec.clone(),
                burst: burst.get(),
                state,
            });
        }
        Ok(Self { limits })
    }

    /// Takes one permit from every limit, waiting (for `wait` limits) only as
    /// long as `deadline` allows. On refusal the error names the limit and how
    /// long until a permit frees up.
    pub async fn acquire(
        &self,
        tool: &str,
        agent_id: &str,
        deadline: Instant,
    ) -> Result<(), CallError> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let key = agent_id.to_owned();
        for limit in &self.limits {
            while let Err(wait) = limit.check(&key) {
                let fits = Instant::now() + wait <= deadline;
                if limit.spec.on_limit == OnLimit::Reject || !fits {
                    let scope = limit.spec.scope;
                    return Err(CallError::RateLimited {
                        scope: scope.as_str(),
                        key: match scope {
                            LimitScope::Tool => tool.to_owned(),
                            LimitScope::AgentTool => format!("{tool}:{agent_id}"),
                        },
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }

    /// Forgets per-agent buckets that are full again, so memory follows the
    /// number of recently active agents rather than every agent ever seen.
    pub fn prune(&self) {
        for limit in &self.limits {
            if let State::AgentTool(l) = &limit.state {
                l.retain_recent();
                l.shrink_to_fit();
            }
        }
    }

    /// The limits as ListTools reports them.
    pub fn describe(&self) -> Vec<pb::RateLimit> {
        self.limits
            .iter()
            .map(|l| pb::RateLimit {
                scope: l.spec.scope.as_str().to_owned(),
                rate: l.spec.rate,
                period_ms: u64::try_from(l.spec.per.as_millis()).unwrap_or(u64::MAX),
                burst: l.burst,
                on_limit: l.spec.on_limit.as_str().to_owned(),
            })
            .collect()
    }
}

impl Limit {
    /// `Err(wait)` when no permit is free now.
    fn check(&self, agent: &String) -> Result<(), Duration> {
        match &self.state {
            State::Tool(l) => l.check().map_err(|nu| nu.wait_time_from(l.clock().now())),
            State::AgentTool(l) => l
                .check_key(agent)
                .map_err(|nu| nu.wait_time_from(l.clock().now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(yaml: &str) -> RateLimits {
        let specs: Vec<RateLimitSpec> = serde_yaml_ng::from_str(yaml).unwrap();
        RateLimits::new(&specs).unwrap()
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn per_agent_limit_isolates_agents() {
        let l = limits("[{scope: agent_tool, rate: 2, per: 1h}]");
        assert!(l.acquire("t", "a", far()).await.is_ok());
        assert!(l.acquire("t", "a", far()).await.is_ok());
        match l.acquire("t", "a", far()).await {
            Err(CallError::RateLimited {
                scope,
                key,
                retry_after,
            }) => {
                assert_eq!(scope, "agent_tool");
                assert_eq!(key, "t:a");
                assert!(retry_after > Duration::from_secs(60 * 29));
            }
            other => panic!("{other:?}"),
        }
        assert!(l.acquire("t", "b", far()).await.is_ok());
    }

    #[tokio::test]
    async fn wait_mode_waits_but_not_past_the_deadline() {
        let l = limits("[{scope: tool, rate: 20, per: 1s, burst: 1, on_limit: wait}]");
        l.acquire("t", "a", far()).await.unwrap();
        // The next permit is ~50ms away: a deadline 1s out waits for it...
        l.acquire("t", "a", Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        // ...a deadline 1ms out is refused at once rather than waiting.
        let e = l
            .acquire("t", "a", Instant::now() + Duration::from_millis(1))
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::RateLimited { scope: "tool", .. }));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let specs: Vec<RateLimitSpec> =
            serde_yaml_ng::from_str("[{scope: tool, rate: 0}]").unwrap();
        assert_eq!(
            RateLimits::new(&specs).unwrap_err().0,
            "rate_limits[0].rate"
        );
    }
}
