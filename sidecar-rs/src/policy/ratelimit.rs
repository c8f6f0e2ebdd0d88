//! A tool's rate limits, checked before the upstream is called.
//!
//! Each limit has a **key** (one bucket for the tool, or one per agent), a
//! **scope** (this sidecar's memory, or a Redis bucket shared by the fleet,
//! see [`crate::policy::fleet::lease`]) and a **unit** (calls, or LLM tokens charged from an
//! estimate and corrected from the response's `usage`). A call must pass all
//! of a tool's limits, in the order configured; put per-agent limits first,
//! since a permit taken from an earlier limit is not returned when a later
//! one refuses. A limit with `enforce: false` only reports what it would
//! have refused (shadow mode).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::time::Instant;

use crate::config::spec::{LimitKey, LimitScope, LimitUnit, OnLimit, RateLimitSpec};
use crate::error::CallError;
use crate::pb;
use crate::policy::bucket::{Keyed, TokenBucket};
use crate::policy::fleet::lease::FleetLimit;
use crate::policy::fleet::Fleet;

/// Per-key buckets unused this long are forgotten.
pub(crate) const IDLE: Duration = Duration::from_secs(300);
/// At most this many keys per limit are held; past it the least useful are
/// forgotten first (an agent or tenant id is chosen by the caller).
pub(crate) const MAX_KEYS: u64 = 100_000;

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

enum State {
    /// Calls, in this sidecar: GCRA via governor.
    PodCalls(Gcra),
    /// Tokens, in this sidecar: a bucket that can go into debt.
    PodTokens(PodTokens),
    /// Either unit, shared by the fleet through Redis.
    Fleet(FleetLimit),
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            State::PodCalls(_) => "PodCalls",
            State::PodTokens(_) => "PodTokens",
            State::Fleet(_) => "Fleet",
        })
    }
}

/// Token buckets per key, all made with one rate and capacity.
struct PodTokens {
    buckets: Keyed<TokenBucket>,
    per_second: f64,
    capacity: f64,
}

impl PodTokens {
    fn get(&self, key: &str) -> Arc<TokenBucket> {
        self.buckets
            .get_with(key, || TokenBucket::new(self.per_second, self.capacity))
    }
}

enum Gcra {
    Tool(DefaultDirectRateLimiter),
    /// Per agent or per tenant, by bucket key.
    Keyed(DefaultKeyedRateLimiter<String>),
}

/// Why a limit refused, before the policy (reject/wait/shadow) applies.
pub(crate) enum Refusal {
    Wait(Duration),
    Unavailable(String),
}

/// Who is calling, as far as limit keys care.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub tool: &'a str,
    pub agent: &'a str,
    pub tenant: &'a str,
    /// The tool's upstream origin.
    pub upstream: &'a str,
}

/// Token-unit charges made for one call, settled once its usage is known.
#[derive(Debug, Default)]
pub struct Charges {
    charged: Vec<(usize, String, f64)>,
}

/// What [`RateLimits::acquire`] let through.
#[derive(Debug, Default)]
pub struct Admitted {
    pub charges: Charges,
    /// Scopes of shadow-mode limits that would have refused this call.
    pub shadowed: Vec<&'static str>,
}

impl RateLimits {
    /// Compiles `specs`; errors are `(field, message)`. Fleet limits need
    /// `fleet`.
    pub fn new(
        specs: &[RateLimitSpec],
        fleet: Option<&Arc<Fleet>>,
    ) -> Result<Self, (String, String)> {
        let mut limits = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let field = |name: &str| format!("rate_limits[{i}].{name}");
            let rate = NonZeroU32::new(spec.rate)
                .ok_or_else(|| (field("rate"), "must be at least 1".to_owned()))?;
            let burst = NonZeroU32::new(spec.burst.unwrap_or(spec.rate))
                .ok_or_else(|| (field("burst"), "must be at least 1".to_owned()))?;
            if spec.per.is_zero() {
                return Err((field("per"), "must be greater than zero".into()));
            }
            // governor counts in u64 nanoseconds (about 584 years) and
            // multiplies the period between permits by the burst: both must
            // fit, or it panics (found by the config fuzz target).
            let fits = |d: Option<Duration>| d.is_some_and(|d| u64::try_from(d.as_nanos()).is_ok());
            if !fits(Some(spec.per)) || !fits((spec.per / rate.get()).checked_mul(burst.get())) {
                return Err((
                    field("per"),
                    format!(
                        "{:?} for a burst of {} is longer than a limiter can count (about 584 years)",
                        spec.per, burst
                    ),
                ));
            }
            let per_second = f64::from(rate.get()) / spec.per.as_secs_f64();
            if spec.key == LimitKey::Upstream && spec.scope != LimitScope::Fleet {
                return Err((
                    field("key"),
                    "key: upstream shares one bucket across tools, which needs scope: fleet; \
                     per pod, bound an upstream with upstreams.<origin>.max_concurrency"
                        .to_owned(),
                ));
            }
            let state = match (spec.scope, spec.unit) {
                (LimitScope::Fleet, _) => {
                    let fleet = fleet.ok_or_else(|| {
                        (
                            field("scope"),
                            "scope: fleet needs the sidecar to run with --redis-url".to_owned(),
                        )
                    })?;
                    State::Fleet(FleetLimit::new(
                        fleet.clone(),
                        per_second,
                        u64::from(burst.get()),
                        spec.on_redis_error,
                    ))
                }
                (LimitScope::Pod, LimitUnit::Tokens) => State::PodTokens(PodTokens {
                    buckets: Keyed::new(IDLE, MAX_KEYS),
                    per_second,
                    capacity: f64::from(burst.get()),
                }),
                (LimitScope::Pod, LimitUnit::Requests) => {
                    let quota = Quota::with_period(spec.per / rate.get())
                        .ok_or_else(|| {
                            (
                                field("per"),
                                format!("{:?} / {} leaves no time between permits", spec.per, rate),
                            )
                        })?
                        .allow_burst(burst);
                    State::PodCalls(match spec.key {
                        LimitKey::Tool => Gcra::Tool(DefaultDirectRateLimiter::direct(quota)),
                        LimitKey::Agent | LimitKey::Tenant => {
                            Gcra::Keyed(DefaultKeyedRateLimiter::keyed(quota))
                        }
                        LimitKey::Upstream => unreachable!("rejected above for pod scope"),
                    })
                }
            };
            limits.push(Limit {
                spec: spec.clone(),
                burst: burst.get(),
                state,
            });
        }
        Ok(Self { limits })
    }

    /// Takes `cost` (1 for call limits; the estimate for token limits) from
    /// every limit, waiting (for `wait` limits) only as long as `deadline`
    /// allows. On refusal the error names the limit and how long until a
    /// permit frees up.
    pub async fn acquire(
        &self,
        who: &Caller<'_>,
        tokens: f64,
        deadline: Instant,
    ) -> Result<Admitted, CallError> {
        let (tool, agent_id) = (who.tool, who.agent);
        let mut admitted = Admitted::default();
        for (index, limit) in self.limits.iter().enumerate() {
            let key = match limit.spec.key {
                LimitKey::Tool => tool.to_owned(),
                LimitKey::Agent => format!("{tool}:{agent_id}"),
                LimitKey::Tenant => format!("{tool}:tenant:{}", who.tenant),
                LimitKey::Upstream => format!("upstream:{}", who.upstream),
            };
            let cost = match limit.spec.unit {
                LimitUnit::Requests => 1.0,
                LimitUnit::Tokens => tokens.max(1.0),
            };
            loop {
                let refusal = match limit.take(&key, cost).await {
                    Ok(()) => {
                        if limit.spec.unit == LimitUnit::Tokens {
                            admitted.charges.charged.push((index, key.clone(), cost));
                        }
                        break;
                    }
                    Err(refusal) => refusal,
                };
                let scope = limit.spec.scope.as_str();
                if !limit.spec.enforce {
                    admitted.shadowed.push(scope);
                    tracing::info!(tool, agent_id, scope, key = %key, "rate limit would have refused (shadow mode)");
                    break;
                }
                let wait = match refusal {
                    Refusal::Unavailable(why) => return Err(CallError::LimiterUnavailable(why)),
                    Refusal::Wait(wait) => wait,
                };
                let fits = Instant::now() + wait <= deadline;
                if limit.spec.on_limit == OnLimit::Reject || !fits {
                    return Err(CallError::RateLimited {
                        scope,
                        key,
                        retry_after: wait,
                    });
                }
                tokio::time::sleep(wait).await;
            }
        }
        Ok(admitted)
    }

    /// Corrects token charges once the call's real usage is known.
    pub async fn settle(&self, charges: Charges, used_tokens: f64) {
        for (index, key, charged) in charges.charged {
            let delta = used_tokens - charged;
            if delta.abs() < 0.5 {
                continue;
            }
            match &self.limits[index].state {
                State::PodTokens(buckets) => buckets.get(&key).adjust(delta),
                State::Fleet(fleet) => fleet.adjust(&key, delta),
                State::PodCalls(_) => {}
            }
        }
    }

    /// Whether the tool has no limits: nothing to wait for.
    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Whether any limit counts tokens (so the caller estimates them).
    pub fn counts_tokens(&self) -> bool {
        self.limits.iter().any(|l| l.spec.unit == LimitUnit::Tokens)
    }

    /// Forgets per-key state nobody used recently, so memory follows the
    /// number of recently active agents rather than every agent ever seen
    /// (governor's keyed limiters are pruned by hand; the rest expire on
    /// their own and are only nudged here).
    pub fn prune(&self) {
        for limit in &self.limits {
            match &limit.state {
                State::PodCalls(Gcra::Keyed(l)) => {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
                State::PodCalls(Gcra::Tool(_)) => {}
                State::PodTokens(tokens) => tokens.buckets.run_pending_tasks(),
                State::Fleet(fleet) => fleet.run_pending_tasks(),
            }
        }
    }

    /// The limits as ListTools reports them.
    pub fn describe(&self) -> Vec<pb::RateLimit> {
        self.limits
            .iter()
            .map(|l| pb::RateLimit {
                key: l.spec.key.as_str().to_owned(),
                scope: l.spec.scope.as_str().to_owned(),
                rate: l.spec.rate,
                period_ms: u64::try_from(l.spec.per.as_millis()).unwrap_or(u64::MAX),
                burst: l.burst,
                on_limit: l.spec.on_limit.as_str().to_owned(),
                unit: match l.spec.unit {
                    LimitUnit::Requests => "requests",
                    LimitUnit::Tokens => "tokens",
                }
                .to_owned(),
                enforce: l.spec.enforce,
            })
            .collect()
    }
}

impl Limit {
    async fn take(&self, key: &str, cost: f64) -> Result<(), Refusal> {
        match &self.state {
            State::PodCalls(Gcra::Tool(l)) => l
                .check()
                .map_err(|nu| Refusal::Wait(nu.wait_time_from(l.clock().now()))),
            State::PodCalls(Gcra::Keyed(l)) => l
                .check_key(&key.to_owned())
                .map_err(|nu| Refusal::Wait(nu.wait_time_from(l.clock().now()))),
            State::PodTokens(buckets) => buckets.get(key).try_take(cost).map_err(Refusal::Wait),
            State::Fleet(fleet) => fleet.take(key, cost).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(tool: &'a str, agent: &'a str) -> Caller<'a> {
        Caller {
            tool,
            agent,
            tenant: "",
            upstream: "http://u",
        }
    }

    fn limits(yaml: &str) -> RateLimits {
        let specs: Vec<RateLimitSpec> = serde_yaml_ng::from_str(yaml).unwrap();
        RateLimits::new(&specs, None).unwrap()
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn per_agent_limit_isolates_agents() {
        let l = limits("[{key: agent, rate: 2, per: 1h}]");
        assert!(l.acquire(&who("t", "a"), 0.0, far()).await.is_ok());
        assert!(l.acquire(&who("t", "a"), 0.0, far()).await.is_ok());
        match l.acquire(&who("t", "a"), 0.0, far()).await {
            Err(CallError::RateLimited {
                scope,
                key,
                retry_after,
            }) => {
                assert_eq!(scope, "pod");
                assert_eq!(key, "t:a");
                assert!(retry_after > Duration::from_secs(60 * 29));
            }
            other => panic!("{other:?}"),
        }
        assert!(l.acquire(&who("t", "b"), 0.0, far()).await.is_ok());
    }

    #[tokio::test]
    async fn wait_mode_waits_but_not_past_the_deadline() {
        let l = limits("[{rate: 20, per: 1s, burst: 1, on_limit: wait}]");
        l.acquire(&who("t", "a"), 0.0, far()).await.unwrap();
        // The next permit is ~50ms away: a deadline 1s out waits for it...
        l.acquire(&who("t", "a"), 0.0, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        // ...a deadline 1ms out is refused at once rather than waiting.
        let e = l
            .acquire(
                &who("t", "a"),
                0.0,
                Instant::now() + Duration::from_millis(1),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::RateLimited { scope: "pod", .. }));
    }

    #[tokio::test]
    async fn shadow_mode_refuses_nothing_and_reports() {
        let l = limits("[{rate: 1, per: 1h, enforce: false}]");
        assert!(l
            .acquire(&who("t", "a"), 0.0, far())
            .await
            .unwrap()
            .shadowed
            .is_empty());
        let second = l.acquire(&who("t", "a"), 0.0, far()).await.unwrap();
        assert_eq!(second.shadowed, vec!["pod"]);
    }

    #[tokio::test(start_paused = true)]
    async fn token_limits_charge_estimates_and_settle_usage() {
        let l = limits("[{unit: tokens, rate: 1000, per: 1s}]");
        let a = l.acquire(&who("llm", "a"), 400.0, far()).await.unwrap();
        // The call really used 900 tokens: 500 more than estimated.
        l.settle(a.charges, 900.0).await;
        // 1000 - 900 = 100 left: a 400-token estimate must wait 300 ms.
        let e = l
            .acquire(
                &who("llm", "a"),
                400.0,
                Instant::now() + Duration::from_millis(10),
            )
            .await
            .unwrap_err();
        match e {
            CallError::RateLimited { retry_after, .. } => {
                assert_eq!(retry_after, Duration::from_millis(300));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn tenant_limits_isolate_tenants() {
        let l = limits("[{key: tenant, rate: 1, per: 1h}]");
        let acme = Caller {
            tenant: "acme",
            ..who("t", "a")
        };
        let globex = Caller {
            tenant: "globex",
            ..who("t", "a")
        };
        assert!(l.acquire(&acme, 0.0, far()).await.is_ok());
        assert!(l.acquire(&acme, 0.0, far()).await.is_err());
        assert!(l.acquire(&globex, 0.0, far()).await.is_ok());
    }

    #[test]
    fn bad_specs_name_the_field() {
        let specs: Vec<RateLimitSpec> = serde_yaml_ng::from_str("[{rate: 0}]").unwrap();
        assert_eq!(
            RateLimits::new(&specs, None).unwrap_err().0,
            "rate_limits[0].rate"
        );
        let specs: Vec<RateLimitSpec> =
            serde_yaml_ng::from_str("[{rate: 5, scope: fleet}]").unwrap();
        let e = RateLimits::new(&specs, None).unwrap_err();
        assert_eq!(e.0, "rate_limits[0].scope");
        assert!(e.1.contains("--redis-url"));
        let specs: Vec<RateLimitSpec> =
            serde_yaml_ng::from_str("[{rate: 5, key: upstream}]").unwrap();
        assert_eq!(
            RateLimits::new(&specs, None).unwrap_err().0,
            "rate_limits[0].key"
        );
        for huge in [
            "[{rate: 1, per: 30s, burst: 2147483647}]",
            "[{rate: 1, per: 100000000000h}]",
        ] {
            let specs: Vec<RateLimitSpec> = serde_yaml_ng::from_str(huge).unwrap();
            assert_eq!(
                RateLimits::new(&specs, None).unwrap_err().0,
                "rate_limits[0].per",
                "{huge}"
            );
        }
    }
}
