//! Fleet limits in this sidecar: permits leased from the shared Redis bucket
//! (see the module above for the protocol) and spent locally, the demand
//! that sizes the next lease, and the local share used while Redis is
//! unreachable.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::spec::OnRedisError;
use crate::policy::bucket::{Keyed, TokenBucket};
use crate::policy::fleet::{Fleet, FleetError};
use crate::policy::ratelimit::{Refusal, IDLE, MAX_KEYS};

/// How long leased fleet permits stay usable before they are handed back.
const LEASE_TTL: Duration = Duration::from_millis(500);
/// A lease aims to cover this much of the sidecar's own recent demand.
const LEASE_SPAN: f64 = 0.1;
/// After Redis refused a bucket's lease (its key holds another type, say),
/// the bucket falls back this long before asking again: a refusal costs one
/// round trip per bucket per interval, not one per call.
const RETRY_AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// A fleet-scoped limit: one Redis bucket per key, leased into local memory.
pub struct FleetLimit {
    fleet: Arc<Fleet>,
    per_second: f64,
    burst: u64,
    on_error: OnRedisError,
    buckets: Keyed<FleetBucket>,
}

impl FleetLimit {
    pub fn new(fleet: Arc<Fleet>, per_second: f64, burst: u64, on_error: OnRedisError) -> Self {
        Self {
            fleet,
            per_second,
            burst,
            on_error,
            buckets: Keyed::new(IDLE, MAX_KEYS),
        }
    }

    fn bucket(&self, key: &str) -> Arc<FleetBucket> {
        self.buckets.get_with(key, || FleetBucket {
            redis_key: self.fleet.bucket_key(key),
            local: Mutex::new(LocalLease::default()),
            refill: tokio::sync::Mutex::new(()),
            fallback: Mutex::new(None),
        })
    }

    /// A token charge for `key` corrected by `delta` (negative: refund),
    /// locally.
    pub fn adjust(&self, key: &str, delta: f64) {
        self.bucket(key).adjust(delta);
    }

    /// Applies pending evictions of idle keys now.
    pub fn run_pending_tasks(&self) {
        self.buckets.run_pending_tasks();
    }

    pub(crate) async fn take(&self, key: &str, cost: f64) -> Result<(), Refusal> {
        let bucket = self.bucket(key);
        if bucket.take_local(cost) {
            return Ok(());
        }
        if let Some(wait) = bucket.refused_for() {
            // Redis said when a block will be there: don't ask again sooner.
            return Err(Refusal::Wait(wait));
        }
        if let Some(why) = self.cannot_lease(&bucket) {
            return self.fall_back(&bucket, cost, &why);
        }
        // One lease request per bucket at a time; the others wait for it.
        let _refilling = bucket.refill.lock().await;
        if bucket.take_local(cost) {
            return Ok(());
        }
        // What the lease this call waited behind found holds for it too: a
        // wait Redis announced, or Redis not answering. Without these, every
        // call queued behind a lease that timed out would wait out a command
        // timeout of its own, in turn (100 queued calls: 25 s).
        if let Some(wait) = bucket.refused_for() {
            return Err(Refusal::Wait(wait));
        }
        if let Some(why) = self.cannot_lease(&bucket) {
            return self.fall_back(&bucket, cost, &why);
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
                bucket.answered();
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
                bucket.answered();
                // Come back when a whole block of this sidecar's fair share has
                // refilled, not for every single permit: under contention that is
                // what keeps leases (Redis round trips) a small fraction of calls.
                let share = self.per_second / live.max(1) as f64;
                let block = Duration::from_secs_f64((want as f64 / share).min(1.0));
                let wait = lease.wait.max(block).max(Duration::from_millis(1));
                bucket.refuse_until(Instant::now() + wait);
                Err(Refusal::Wait(wait))
            }
            Err(FleetError::Refused(e)) => {
                let why = bucket.refused(&e);
                self.fall_back(&bucket, cost, &why)
            }
            Err(e @ FleetError::Unreachable(_)) => self.fall_back(&bucket, cost, &e.to_string()),
        }
    }

    /// Why `bucket` cannot lease now, if it cannot: fleet mode is off, or
    /// Redis refused this bucket's lease a moment ago.
    fn cannot_lease(&self, bucket: &FleetBucket) -> Option<Arc<str>> {
        if !self.fleet.healthy() {
            return Some(self.fleet.down_reason());
        }
        bucket.refusal()
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
    /// Redis refused this bucket's last lease: what it said, and until when
    /// the bucket falls back without asking again.
    redis_refusal: Option<(Arc<str>, Instant)>,
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

    fn refused_for(&self) -> Option<Duration> {
        let lease = self.lock();
        lease
            .refused_until
            .and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Records that Redis refused this bucket's lease; logs the first refusal
    /// of a run of them. Returns why, as a fallback reason.
    fn refused(&self, error: &str) -> Arc<str> {
        let why: Arc<str> = Arc::from(format!(
            "Redis refused the lease for {}: {error}",
            self.redis_key
        ));
        let first = self
            .lock()
            .redis_refusal
            .replace((why.clone(), Instant::now() + RETRY_AFTER_REFUSAL))
            .is_none();
        if first {
            tracing::warn!(
                key = %self.redis_key,
                error,
                "fleet limits: Redis refused this bucket's lease; it falls back per on_redis_error and retries every second"
            );
        }
        why
    }

    /// Redis answered a lease: a run of refusals, if any, is over.
    fn answered(&self) {
        if self.lock().redis_refusal.take().is_some() {
            tracing::info!(key = %self.redis_key, "fleet limits: Redis leases this bucket again");
        }
    }

    /// Why this bucket falls back without asking Redis, while it does.
    fn refusal(&self) -> Option<Arc<str>> {
        let lease = self.lock();
        let (why, until) = lease.redis_refusal.as_ref()?;
        (Instant::now() < *until).then(|| why.clone())
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
