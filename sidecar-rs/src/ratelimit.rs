//! A tool's rate limits, checked before the upstream is called.
//!
//! Each limit has a **key** (one bucket for the tool, or one per agent), a
//! **scope** (this sidecar's memory, or a Redis bucket shared by the fleet,
//! see [`crate::fleet`]) and a **unit** (calls, or LLM tokens charged from an
//! estimate and corrected from the response's `usage`). A call must pass all
//! of a tool's limits, in the order configured; put per-agent limits first,
//! since a permit taken from an earlier limit is not returned when a later
//! one refuses. A limit with `enforce: false` only reports what it would
//! have refused (shadow mode).

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use tokio::time::Instant;

use crate::bucket::TokenBucket;
use crate::config::{LimitKey, LimitScope, LimitUnit, OnLimit, OnRedisError, RateLimitSpec};
use crate::error::CallError;
use crate::fleet::Fleet;
use crate::pb;

/// How long leased fleet permits stay usable before they are handed back.
const LEASE_TTL: Duration = Duration::from_millis(500);
/// Buckets unused this long (and holding nothing) are forgotten.
const IDLE: Duration = Duration::from_secs(300);
/// A lease aims to cover this much of the sidecar's own recent demand.
const LEASE_SPAN: f64 = 0.1;

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
    PodTokens(Keyed<TokenBucket>),
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

enum Gcra {
    Tool(DefaultDirectRateLimiter),
    /// Per agent or per tenant, by bucket key.
    Keyed(DefaultKeyedRateLimiter<String>),
}

/// One bucket per key, made on first use.
struct Keyed<T> {
    buckets: DashMap<String, Arc<T>>,
    make: Box<dyn Fn() -> T + Send + Sync>,
}

impl<T> Keyed<T> {
    fn get(&self, key: &str) -> Arc<T> {
        if let Some(b) = self.buckets.get(key) {
            return b.clone();
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }
}

/// Why a limit refused, before the policy (reject/wait/shadow) applies.
enum Refusal {
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
                    State::Fleet(FleetLimit {
                        fleet: fleet.clone(),
                        per_second,
                        burst: u64::from(burst.get()),
                        on_error: spec.on_redis_error,
                        buckets: DashMap::new(),
                    })
                }
                (LimitScope::Pod, LimitUnit::Tokens) => {
                    let capacity = f64::from(burst.get());
                    State::PodTokens(Keyed {
                        buckets: DashMap::new(),
                        make: Box::new(move || TokenBucket::new(per_second, capacity)),
                    })
                }
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
                State::Fleet(fleet) => fleet.bucket(&key).adjust(delta),
                State::PodCalls(_) => {}
            }
        }
    }

    /// Whether any limit counts tokens (so the caller estimates them).
    pub fn counts_tokens(&self) -> bool {
        self.limits.iter().any(|l| l.spec.unit == LimitUnit::Tokens)
    }

    /// Forgets per-agent buckets that are full again, so memory follows the
    /// number of recently active agents rather than every agent ever seen.
    pub fn prune(&self) {
        for limit in &self.limits {
            match &limit.state {
                State::PodCalls(Gcra::Keyed(l)) => {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
                State::PodCalls(Gcra::Tool(_)) => {}
                State::PodTokens(keyed) => keyed.buckets.retain(|_, b| !b.is_idle(IDLE)),
                State::Fleet(fleet) => fleet.buckets.retain(|_, b| !b.is_idle(IDLE)),
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

/// A fleet-scoped limit: one Redis bucket per key, leased into local memory.
struct FleetLimit {
    fleet: Arc<Fleet>,
    per_second: f64,
    burst: u64,
    on_error: OnRedisError,
    buckets: DashMap<String, Arc<FleetBucket>>,
}

impl FleetLimit {
    fn bucket(&self, key: &str) -> Arc<FleetBucket> {
        if let Some(b) = self.buckets.get(key) {
            return b.clone();
        }
        self.buckets
            .entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(FleetBucket {
                    redis_key: self.fleet.bucket_key(key),
                    local: Mutex::new(LocalLease::default()),
                    refill: tokio::sync::Mutex::new(()),
                    fallback: Mutex::new(None),
                })
            })
            .clone()
    }

    async fn take(&self, key: &str, cost: f64) -> Result<(), Refusal> {
        let bucket = self.bucket(key);
        if bucket.take_local(cost) {
            return Ok(());
        }
        if let Some(wait) = bucket.refused_for() {
            // Redis said when a block will be there: don't ask again sooner.
            return Err(Refusal::Wait(wait));
        }
        if !self.fleet.healthy() {
            return self.fall_back(&bucket, cost, "Redis is unreachable");
        }
        // One lease request per bucket at a time; the others wait for it.
        let _refilling = bucket.refill.lock().await;
        if bucket.take_local(cost) {
            return Ok(());
        }
        let live = u64::from(self.fleet.live());
        let (want, returned) = bucket.plan(cost, self.burst, live);
        match self
            .fleet
            .lease(
                &bucket.redis_key,
                self.per_second,
                self.burst,
                want,
                returned,
                LEASE_TTL * 4,
            )
            .await
        {
            Ok(lease) if lease.granted > 0 => {
                bucket.add_lease(lease.granted as f64);
                if bucket.take_local(cost) {
                    Ok(())
                } else {
                    Err(Refusal::Wait(Duration::from_secs_f64(
                        (cost / self.per_second).min(1.0),
                    )))
                }
            }
            Ok(lease) => {
                // Come back when a whole block of this sidecar's fair share has
                // refilled, not for every single permit: under contention that is
                // what keeps leases (Redis round trips) a small fraction of calls.
                let share = self.per_second / live.max(1) as f64;
                let block = Duration::from_secs_f64((want as f64 / share).min(1.0));
                let wait = lease.wait.max(block).max(Duration::from_millis(1));
                bucket.refuse_until(Instant::now() + wait);
                Err(Refusal::Wait(wait))
            }
            Err(e) => self.fall_back(&bucket, cost, &e),
        }
    }

    /// While Redis is unreachable: `local_share` enforces this sidecar's
    /// share (rate ÷ live sidecars); `deny` refuses.
    fn fall_back(&self, bucket: &FleetBucket, cost: f64, why: &str) -> Result<(), Refusal> {
        match self.on_error {
            OnRedisError::Deny => Err(Refusal::Unavailable(format!(
                "the fleet rate limiter is unavailable ({why}) and this limit is set to on_redis_error: deny"
            ))),
            OnRedisError::LocalShare => {
                let live = self.fleet.live();
                let mut fallback = bucket.fallback.lock().unwrap_or_else(|e| e.into_inner());
                let stale = fallback.as_ref().is_none_or(|(n, _)| *n != live);
                if stale {
                    let share = f64::from(live);
                    *fallback = Some((
                        live,
                        TokenBucket::new(self.per_second / share, (self.burst as f64 / share).max(1.0)),
                    ));
                }
                let (_, local) = fallback.as_ref().expect("set above");
                local.try_take(cost).map_err(Refusal::Wait)
            }
        }
    }
}

struct FleetBucket {
    redis_key: String,
    local: Mutex<LocalLease>,
    refill: tokio::sync::Mutex<()>,
    /// The local share used while Redis is unreachable, sized for the live
    /// count it was made with.
    fallback: Mutex<Option<(u32, TokenBucket)>>,
}

/// Permits leased from Redis, and this sidecar's recent demand.
#[derive(Default)]
struct LocalLease {
    /// May go negative: a token limit corrected upward after the fact.
    permits: f64,
    expires: Option<Instant>,
    /// Permits used in the current one-second window, and in the last one.
    used_now: f64,
    used_last: f64,
    window_start: Option<Instant>,
    /// Redis had nothing to lease before this instant.
    refused_until: Option<Instant>,
}

impl FleetBucket {
    fn lock(&self) -> std::sync::MutexGuard<'_, LocalLease> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes from the lease if it is still valid and holds enough.
    fn take_local(&self, cost: f64) -> bool {
        let mut lease = self.lock();
        let now = Instant::now();
        let start = *lease.window_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(1) {
            lease.used_last = lease.used_now;
            lease.used_now = 0.0;
            lease.window_start = Some(now);
        }
        // Demand counts every attempt, so a pod refused for lack of permits
        // still asks for blocks that match what it needs.
        lease.used_now += cost;
        let valid = lease.expires.is_some_and(|e| now < e);
        if valid && lease.permits >= cost {
            lease.permits -= cost;
            true
        } else {
            false
        }
    }

    /// How many permits to ask for (demand over the next lease span, capped
    /// at a fair share of the burst), and how many expired ones to return.
    fn plan(&self, cost: f64, burst: u64, live: u64) -> (u64, u64) {
        let mut lease = self.lock();
        let expired = lease.expires.is_none_or(|e| Instant::now() >= e);
        let mut returned = 0;
        if expired && lease.permits > 0.0 {
            returned = lease.permits.floor() as u64;
            lease.permits -= returned as f64;
        }
        let debt = (-lease.permits).max(0.0);
        let demand = lease.used_last.max(lease.used_now) * LEASE_SPAN;
        let fair = (burst / live.max(1)).max(1) as f64;
        let want = (cost + debt).max(demand.min(fair)).ceil() as u64;
        (want.max(1), returned)
    }

    /// Unused for `idle` with nothing leased or owed.
    fn is_idle(&self, idle: Duration) -> bool {
        let lease = self.lock();
        lease.permits.abs() < 1.0
            && lease
                .window_start
                .is_none_or(|start| start.elapsed() >= idle)
    }

    fn refused_for(&self) -> Option<Duration> {
        let lease = self.lock();
        lease
            .refused_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    fn refuse_until(&self, until: Instant) {
        self.lock().refused_until = Some(until);
    }

    fn add_lease(&self, granted: f64) {
        let mut lease = self.lock();
        lease.permits += granted;
        lease.expires = Some(Instant::now() + LEASE_TTL);
    }

    /// A token charge corrected by `delta` (negative: refund), locally.
    fn adjust(&self, delta: f64) {
        self.lock().permits -= delta;
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
    }
}
