//! Retries: which failures are worth another attempt, how long to wait, and
//! the budget that keeps retries from multiplying an outage.

use std::time::{Duration, SystemTime};

use http::header::{HeaderName, RETRY_AFTER};
use http::HeaderMap;
use tower::retry::budget::TpsBudget;

use crate::config::spec::{RetryBudgetSpec, RetrySpec};
use crate::policy::quota;

/// A tool's compiled retry policy.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// 1 when the tool is not idempotent: its requests are never repeated.
    pub max_attempts: u32,
    pub on_status: Vec<u16>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub attempt_timeout: Option<Duration>,
}

impl RetryPolicy {
    pub fn new(spec: &RetrySpec, idempotent: bool) -> Result<Self, (String, String)> {
        if spec.max_attempts == 0 {
            return Err(("retry.max_attempts".into(), "must be at least 1".into()));
        }
        if spec.backoff_initial > spec.backoff_max {
            return Err((
                "retry.backoff_initial".into(),
                "must not exceed retry.backoff_max".into(),
            ));
        }
        if spec.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err((
                "retry.attempt_timeout".into(),
                "must be greater than zero".into(),
            ));
        }
        Ok(Self {
            max_attempts: if idempotent { spec.max_attempts } else { 1 },
            on_status: spec.on_status.clone(),
            backoff_initial: spec.backoff_initial,
            backoff_max: spec.backoff_max,
            attempt_timeout: spec.attempt_timeout,
        })
    }

    pub fn retries_status(&self, status: u16) -> bool {
        self.on_status.contains(&status)
    }

    /// Exponential backoff with full jitter before retry number `retry`
    /// (1-based): uniform in [0, min(max, initial × 2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .backoff_initial
            .saturating_mul(1u32 << (retry.saturating_sub(1)).min(20))
            .min(self.backoff_max);
        cap.mul_f64(fastrand::f64())
    }
}

/// Looked up as a constant: by `&str` the name is parsed on every lookup.
pub(crate) const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// How long the upstream asked us to wait: `Retry-After` (seconds or an HTTP
/// date) or `x-ratelimit-reset` (seconds, or a Unix timestamp), at most
/// `max` (see [`quota::bounded`]).
pub fn upstream_wait(headers: &HeaderMap, now: SystemTime, max: Duration) -> Option<Duration> {
    let text = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(value) = text(&RETRY_AFTER) {
        if let Ok(secs) = value.parse::<f64>() {
            return quota::bounded("retry-after", value, secs, max);
        }
        if let Ok(at) = httpdate::parse_http_date(value) {
            let secs = match at.duration_since(now) {
                Ok(ahead) => ahead.as_secs_f64(),
                Err(_) => 0.0,
            };
            return quota::bounded("retry-after", value, secs, max);
        }
    }
    if let Some(value) = text(&X_RATELIMIT_RESET) {
        if let Ok(n) = value.trim_end_matches('s').parse::<f64>() {
            // Large values are epoch seconds, small ones a delay.
            let secs = quota::delay_or_epoch(n, now);
            return quota::bounded("x-ratelimit-reset", value, secs, max);
        }
    }
    None
}

/// The retry budget of one upstream origin: retries may add at most `ratio`
/// × the requests of the last 10 s, plus `min_per_second` (as Finagle and
/// linkerd do), so retries cannot multiply an outage. tower's `TpsBudget` is
/// that budget; `spec` was checked by [`check_budget`].
pub fn budget(spec: &RetryBudgetSpec) -> TpsBudget {
    TpsBudget::new(BUDGET_WINDOW, spec.min_per_second, spec.ratio as f32)
}

/// Why `spec` cannot make a budget, as `(field, message)`.
pub fn check_budget(spec: &RetryBudgetSpec) -> Result<(), (&'static str, String)> {
    if !(0.0..=1000.0).contains(&spec.ratio) {
        return Err((
            "retry_budget.ratio",
            format!("must be between 0 and 1000, not {}", spec.ratio),
        ));
    }
    if spec.min_per_second >= i32::MAX as u32 {
        return Err(("retry_budget.min_per_second", "is too large".to_owned()));
    }
    Ok(())
}

const BUDGET_WINDOW: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;
    use tower::retry::budget::Budget;

    #[test]
    fn non_idempotent_tools_get_one_attempt() {
        let spec = RetrySpec::default();
        assert_eq!(RetryPolicy::new(&spec, false).unwrap().max_attempts, 1);
        assert_eq!(RetryPolicy::new(&spec, true).unwrap().max_attempts, 3);
    }

    #[test]
    fn backoff_is_jittered_below_the_cap() {
        let p = RetryPolicy::new(&RetrySpec::default(), true).unwrap();
        for retry in 1..10 {
            let cap = (Duration::from_millis(50) * (1 << (retry - 1))).min(Duration::from_secs(2));
            assert!(p.backoff(retry) <= cap);
        }
    }

    fn upstream_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
        super::upstream_wait(headers, now, Duration::from_secs(600))
    }

    #[test]
    fn parses_upstream_waits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(upstream_wait(&h, now), Some(Duration::from_secs(2)));
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(now + Duration::from_secs(7))
                .parse()
                .unwrap(),
        );
        assert_eq!(upstream_wait(&h, now), Some(Duration::from_secs(7)));
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", "1700000003".parse().unwrap());
        assert_eq!(upstream_wait(&h, now), Some(Duration::from_secs(3)));
        h.insert("x-ratelimit-reset", "1.5".parse().unwrap());
        assert_eq!(upstream_wait(&h, now), Some(Duration::from_millis(1500)));
        assert_eq!(upstream_wait(&HeaderMap::new(), now), None);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_bounds_retries_to_a_share_of_requests() {
        let b = budget(&RetryBudgetSpec {
            ratio: 0.2,
            min_per_second: 0,
        });
        for _ in 0..100 {
            b.deposit();
        }
        let granted = (0..100).filter(|_| b.withdraw()).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn out_of_range_ratios_are_refused() {
        for ratio in [-0.1, 1000.5, f64::NAN, f64::INFINITY] {
            let spec = RetryBudgetSpec {
                ratio,
                min_per_second: 1,
            };
            assert_eq!(check_budget(&spec).unwrap_err().0, "retry_budget.ratio");
        }
    }
}
