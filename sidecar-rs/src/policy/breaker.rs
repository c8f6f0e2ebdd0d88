//! A circuit breaker per upstream origin.
//!
//! Closed: requests flow; outcomes are counted in a rolling window. It opens
//! when the failure ratio reaches `failure_ratio` over at least
//! `min_requests`, or after `consecutive_failures` in a row. Open: calls fail
//! at once with CIRCUIT_OPEN and a `retry_after`. After `open_for` it turns
//! half-open and lets `half_open_probes` calls through: a success closes it,
//! a failure opens it again.
//!
//! The state sits behind a std `Mutex`, not a tokio one: nothing awaits while
//! holding it, and each critical section is a few arithmetic operations.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::spec::BreakerSpec;
use crate::policy::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Closed,
    Open { until: Instant },
    HalfOpen { probes: u32 },
}

impl Mode {
    /// The value of `sidecar_circuit_state`.
    fn gauge(self) -> i64 {
        match self {
            Mode::Closed => 0,
            Mode::Open { .. } => 1,
            Mode::HalfOpen { .. } => 2,
        }
    }
}

#[derive(Debug)]
struct Inner {
    mode: Mode,
    /// (successes, failures)
    window: Window,
    consecutive: u32,
}

/// How a request went, as far as the upstream's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// Says nothing about the upstream (e.g. the caller cancelled).
    Ignored,
}

#[derive(Debug)]
pub struct CircuitBreaker {
    spec: BreakerSpec,
    origin: String,
    inner: Mutex<Inner>,
    gauge: IntGauge,
}

/// Admission to send one request; report how it went with
/// [`BreakerPermit::record`]. Dropping it unrecorded frees a probe slot.
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    recorded: bool,
}

/// Longest `window` or `open_for` accepted: past this a breaker remembers
/// or punishes an outage longer than anyone would mean.
const MAX_SPAN: Duration = Duration::from_secs(3600);

/// Why `spec` cannot make a breaker, as `(field, message)`; fields are
/// relative to the upstream's policy (`circuit_breaker.…`).
pub fn check(spec: &BreakerSpec) -> Result<(), (&'static str, String)> {
    if !(spec.failure_ratio > 0.0 && spec.failure_ratio <= 1.0) {
        return Err((
            "circuit_breaker.failure_ratio",
            format!(
                "must be greater than 0 and at most 1, not {}",
                spec.failure_ratio
            ),
        ));
    }
    if spec.min_requests == 0 {
        return Err((
            "circuit_breaker.min_requests",
            "must be at least 1".to_owned(),
        ));
    }
    if spec.consecutive_failures == 0 {
        return Err((
            "circuit_breaker.consecutive_failures",
            "must be at least 1".to_owned(),
        ));
    }
    if spec.half_open_probes == 0 {
        return Err((
            "circuit_breaker.half_open_probes",
            "must be at least 1 (a half-open circuit closes only after a probe succeeds)"
                .to_owned(),
        ));
    }
    for (field, span) in [
        ("circuit_breaker.window", spec.window),
        ("circuit_breaker.open_for", spec.open_for),
    ] {
        if span.is_zero() || span > MAX_SPAN {
            return Err((
                field,
                format!("must be greater than 0 and at most {MAX_SPAN:?}, not {span:?}"),
            ));
        }
    }
    Ok(())
}

impl CircuitBreaker {
    pub fn new(origin: String, spec: BreakerSpec, gauge: IntGauge) -> Self {
        gauge.set(0);
        Self {
            inner: Mutex::new(Inner {
                mode: Mode::Closed,
                window: Window::new(spec.window),
                consecutive: 0,
            }),
            spec,
            origin,
            gauge,
        }
    }

    /// A permit, or how long until the circuit may let a call through.
    pub fn admit(&self) -> Result<BreakerPermit<'_>, Duration> {
        let permit = |probe| BreakerPermit {
            breaker: self,
            probe,
            recorded: false,
        };
        if !self.spec.enabled {
            return Ok(permit(false));
        }
        let mut inner = self.lock();
        let now = Instant::now();
        match inner.mode {
            Mode::Closed => Ok(permit(false)),
            Mode::Open { until } if now < until => Err(until - now),
            Mode::Open { .. } => {
                self.transition(&mut inner, Mode::HalfOpen { probes: 1 });
                Ok(permit(true))
            }
            Mode::HalfOpen { probes } if probes < self.spec.half_open_probes => {
                inner.mode = Mode::HalfOpen { probes: probes + 1 };
                Ok(permit(true))
            }
            // Probes are out; their verdict is due within one call.
            Mode::HalfOpen { .. } => Err(self.spec.open_for.min(Duration::from_secs(1))),
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        if !self.spec.enabled {
            return;
        }
        let mut inner = self.lock();
        match (inner.mode, outcome) {
            (Mode::HalfOpen { .. }, Outcome::Success) if probe => {
                inner.window.clear();
                inner.consecutive = 0;
                self.transition(&mut inner, Mode::Closed);
            }
            (Mode::HalfOpen { .. }, Outcome::Failure) if probe => {
                let until = Instant::now() + self.spec.open_for;
                self.transition(&mut inner, Mode::Open { until });
            }
            (Mode::HalfOpen { probes }, Outcome::Ignored) if probe => {
                inner.mode = Mode::HalfOpen {
                    probes: probes.saturating_sub(1),
                };
            }
            (Mode::Closed, Outcome::Success) => {
                inner.consecutive = 0;
                inner.window.add(1, 0);
            }
            (Mode::Closed, Outcome::Failure) => {
                inner.consecutive += 1;
                inner.window.add(0, 1);
                let (ok, failed) = inner.window.totals();
                let total = ok + failed;
                let ratio_tripped = total >= u64::from(self.spec.min_requests)
                    && failed as f64 >= self.spec.failure_ratio * total as f64;
                if ratio_tripped || inner.consecutive >= self.spec.consecutive_failures {
                    let until = Instant::now() + self.spec.open_for;
                    tracing::warn!(
                        upstream = %self.origin,
                        failures = failed,
                        requests = total,
                        consecutive = inner.consecutive,
                        "circuit opened"
                    );
                    self.transition(&mut inner, Mode::Open { until });
                }
            }
            // Late outcomes of calls admitted before the state changed.
            _ => {}
        }
    }

    fn transition(&self, inner: &mut Inner, to: Mode) {
        let from = inner.mode;
        inner.mode = to;
        self.gauge.set(to.gauge());
        if std::mem::discriminant(&from) != std::mem::discriminant(&to) {
            let state = match to {
                Mode::Closed => "closed",
                Mode::Open { .. } => "open",
                Mode::HalfOpen { .. } => "half_open",
            };
            tracing::info!(upstream = %self.origin, state, "circuit state changed");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the counters inconsistent enough to
        // matter; keep serving rather than poisoning every later call.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl BreakerPermit<'_> {
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.probe, Outcome::Ignored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(yaml: &str) -> CircuitBreaker {
        let spec: BreakerSpec = serde_yaml_ng::from_str(yaml).unwrap();
        CircuitBreaker::new("http://u".into(), spec, IntGauge::new("g", "g").unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_consecutive_failures_then_probes() {
        let b = breaker("{consecutive_failures: 3, open_for: 5s, min_requests: 100}");
        for _ in 0..3 {
            b.admit().unwrap().record(Outcome::Failure);
        }
        let wait = b.admit().err().expect("open");
        assert_eq!(wait, Duration::from_secs(5));
        assert_eq!(b.gauge.get(), 1);
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.admit().expect("half-open probe");
        assert!(b.admit().is_err(), "only one probe at a time");
        assert_eq!(b.gauge.get(), 2);
        probe.record(Outcome::Success);
        assert_eq!(b.gauge.get(), 0);
        assert!(b.admit().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_failure_ratio_with_minimum_volume() {
        let b = breaker("{failure_ratio: 0.5, min_requests: 10, consecutive_failures: 100}");
        for i in 0..9 {
            let outcome = if i % 2 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            b.admit().unwrap().record(outcome);
        }
        assert!(b.admit().is_ok(), "9 requests are below the minimum");
        b.admit().unwrap().record(Outcome::Failure);
        assert!(b.admit().is_err(), "6 of 10 failed");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_and_dropped_probe_frees_its_slot() {
        let b = breaker("{consecutive_failures: 1, open_for: 1s}");
        b.admit().unwrap().record(Outcome::Failure);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(b.admit().unwrap());
        let probe = b.admit().expect("slot freed by the dropped probe");
        probe.record(Outcome::Failure);
        assert!(b.admit().is_err());
    }
}
