//! A token bucket that can go into debt, and per-key values (buckets,
//! leases) that are forgotten once idle.
//!
//! Used where governor's GCRA does not fit: limits counted in LLM tokens
//! (charged from an estimate, then corrected up or down once the response's
//! `usage` is known) and the local share a sidecar falls back to when Redis
//! is unreachable. A std `Mutex` guards a few arithmetic operations; nothing
//! awaits while holding it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    /// Tokens added per second.
    rate: f64,
    capacity: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_second: f64, capacity: f64) -> Self {
        Self {
            rate: rate_per_second.max(f64::MIN_POSITIVE),
            capacity: capacity.max(1.0),
            state: Mutex::new((capacity.max(1.0), Instant::now())),
        }
    }

    fn refilled(&self) -> std::sync::MutexGuard<'_, (f64, Instant)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.rate).min(self.capacity);
        state.1 = now;
        state
    }

    /// Takes `n` tokens, or says how long until they are there. A request
    /// larger than the whole bucket is let through once the bucket is full,
    /// leaving it in debt, so it cannot be starved forever.
    pub fn try_take(&self, n: f64) -> Result<(), Duration> {
        let mut state = self.refilled();
        let need = n.min(self.capacity);
        if state.0 >= need {
            state.0 -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - state.0) / self.rate))
        }
    }

    /// Charges `delta` more tokens (negative: refunds them), e.g. once the
    /// real cost of a call is known.
    pub fn adjust(&self, delta: f64) {
        let mut state = self.refilled();
        state.0 = (state.0 - delta).min(self.capacity);
    }
}

/// One value per key (an agent's bucket, a tenant's lease), made on first
/// use and forgotten once nobody has used it for `idle`, so memory follows
/// the keys active recently rather than every key ever seen. moka's
/// time-to-idle does the forgetting; the key count is also capped, evicting
/// the least useful keys first, so a flood of fresh keys cannot grow it
/// without bound.
pub struct Keyed<T> {
    values: moka::sync::Cache<String, Arc<T>>,
}

impl<T: Send + Sync + 'static> Keyed<T> {
    pub fn new(idle: Duration, max_keys: u64) -> Self {
        Self {
            values: moka::sync::Cache::builder()
                .time_to_idle(idle)
                .max_capacity(max_keys)
                .build(),
        }
    }

    /// The value for `key`, made by `make` if there is none.
    pub fn get_with(&self, key: &str, make: impl FnOnce() -> T) -> Arc<T> {
        if let Some(value) = self.values.get(key) {
            return value;
        }
        self.values.get_with(key.to_owned(), || Arc::new(make()))
    }

    /// Applies pending evictions now (moka otherwise does it as it is used).
    pub fn run_pending_tasks(&self) {
        self.values.run_pending_tasks();
    }

    /// Keys held, as of the last pending-task run.
    pub fn len(&self) -> u64 {
        self.values.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn takes_refills_and_goes_into_debt() {
        let b = TokenBucket::new(10.0, 10.0);
        assert!(b.try_take(10.0).is_ok());
        let wait = b.try_take(5.0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(b.try_take(5.0).is_ok());
        b.adjust(10.0); // the call cost 10 more than estimated: debt
        tokio::time::advance(Duration::from_millis(900)).await;
        assert!(b.try_take(1.0).is_err());
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(b.try_take(1.0).is_ok());
        // Oversized requests pass once the bucket is full.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(b.try_take(50.0).is_ok());
    }

    #[test]
    fn idle_keys_are_forgotten_and_used_ones_kept() {
        let keyed: Keyed<TokenBucket> = Keyed::new(Duration::from_millis(200), 1_000);
        for agent in 0..100 {
            keyed.get_with(&format!("agent-{agent}"), || TokenBucket::new(1.0, 1.0));
        }
        keyed.run_pending_tasks();
        assert_eq!(keyed.len(), 100);
        // moka's clock is its own (not tokio's), so this waits for real: keep
        // one key in use while the others go idle.
        let until = std::time::Instant::now() + Duration::from_millis(600);
        while std::time::Instant::now() < until {
            keyed.get_with("agent-0", || unreachable!("agent-0 is still held"));
            std::thread::sleep(Duration::from_millis(50));
        }
        keyed.run_pending_tasks();
        assert_eq!(keyed.len(), 1);
    }

    #[test]
    fn the_key_count_is_capped() {
        let keyed: Keyed<TokenBucket> = Keyed::new(Duration::from_secs(300), 64);
        for agent in 0..10_000 {
            keyed.get_with(&format!("agent-{agent}"), || TokenBucket::new(1.0, 1.0));
        }
        keyed.run_pending_tasks();
        assert!(keyed.len() <= 64, "{}", keyed.len());
    }
}
