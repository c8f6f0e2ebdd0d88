//! A rolling time window of counters, split into buckets so old events age out
//! smoothly: the circuit breaker's successes and failures. (The retry budget
//! uses tower's `TpsBudget`, which keeps its own window.)

use std::time::Duration;

use tokio::time::Instant;

const BUCKETS: usize = 10;

/// Two counters summed over the last `span`.
#[derive(Debug)]
pub struct Window {
    bucket_len: Duration,
    buckets: [(u64, u64); BUCKETS],
    /// Start of the bucket at `head`.
    head_start: Instant,
    head: usize,
}

impl Window {
    pub fn new(span: Duration) -> Self {
        Self {
            bucket_len: (span / BUCKETS as u32).max(Duration::from_millis(1)),
            buckets: [(0, 0); BUCKETS],
            head_start: Instant::now(),
            head: 0,
        }
    }

    /// Moves the head to the bucket for `now`, clearing buckets that aged out.
    fn advance(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = (elapsed.as_nanos() / self.bucket_len.as_nanos()) as usize;
        if steps == 0 {
            return;
        }
        for _ in 0..steps.min(BUCKETS) {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = (0, 0);
        }
        self.head_start += self.bucket_len * steps as u32;
    }

    pub fn add(&mut self, a: u64, b: u64) {
        self.advance(Instant::now());
        let bucket = &mut self.buckets[self.head];
        bucket.0 += a;
        bucket.1 += b;
    }

    /// Totals over the window.
    pub fn totals(&mut self) -> (u64, u64) {
        self.advance(Instant::now());
        self.buckets
            .iter()
            .fold((0, 0), |(a, b), (x, y)| (a + x, b + y))
    }

    pub fn clear(&mut self) {
        self.buckets = [(0, 0); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn counts_age_out() {
        let mut w = Window::new(Duration::from_secs(10));
        w.add(3, 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        w.add(1, 1);
        assert_eq!(w.totals(), (4, 2));
        tokio::time::advance(Duration::from_millis(5500)).await;
        assert_eq!(w.totals(), (1, 1));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(w.totals(), (0, 0));
    }
}
