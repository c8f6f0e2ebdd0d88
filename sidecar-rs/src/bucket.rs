//! A token bucket that can go into debt.
//!
//! Used where governor's GCRA does not fit: limits counted in LLM tokens
//! (charged from an estimate, then corrected up or down once the response's
//! `usage` is known) and the local share a sidecar falls back to when Redis
//! is unreachable. A std `Mutex` guards a few arithmetic operations; nothing
//! awaits while holding it.

use std::sync::Mutex;
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

    /// Whether the bucket is full and has not been used for `idle`: it can
    /// be forgotten and made afresh without changing anything.
    pub fn is_idle(&self, idle: Duration) -> bool {
        let state = self.refilled();
        state.0 >= self.capacity && state.1.elapsed() >= idle
    }

    /// Charges `delta` more tokens (negative: refunds them), e.g. once the
    /// real cost of a call is known.
    pub fn adjust(&self, delta: f64) {
        let mut state = self.refilled();
        state.0 = (state.0 - delta).min(self.capacity);
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
}
