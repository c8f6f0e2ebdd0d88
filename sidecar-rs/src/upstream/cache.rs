//! Sharing upstream work between calls with the same arguments.
//!
//! * [`ToolCache`]: opt-in per tool (moka). Keys are the tool name plus the
//!   canonical JSON of the arguments, so key order does not matter. Entries
//!   expire after `ttl` ± jitter (no synchronized expiry), and the cache is
//!   bounded by entries and by bytes. Errors are cached only with an explicit
//!   `negative_ttl`.
//! * [`SingleFlight`]: concurrent identical calls share one in-flight
//!   request. The shared work is dropped (and its upstream request with it)
//!   only when every caller waiting on it has gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, Shared, WeakShared};
use futures::FutureExt;
use moka::Expiry;

use crate::config::spec::CacheSpec;
use crate::error::CallError;

/// What the upstream work measured, reported in the result's timing.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchStats {
    pub attempts: u32,
    pub queued_us: u64,
    pub upstream_us: u64,
    pub validation_us: u64,
}

/// The upstream part of a call's outcome, shareable between callers:
/// `(HTTP status, validated JSON body)` or the error, plus its stats.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub result: Result<(u16, Bytes), CallError>,
    pub stats: FetchStats,
}

pub struct ToolCache {
    cache: moka::future::Cache<String, Outcome>,
    negative: bool,
}

impl std::fmt::Debug for ToolCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolCache")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

struct JitteredTtl {
    ttl: Duration,
    jitter: f64,
    negative_ttl: Option<Duration>,
}

impl Expiry<String, Outcome> for JitteredTtl {
    fn expire_after_create(&self, _: &String, value: &Outcome, _: Instant) -> Option<Duration> {
        Some(match value.result {
            Ok(_) => self
                .ttl
                .mul_f64(1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0)),
            Err(_) => self.negative_ttl.unwrap_or(Duration::ZERO),
        })
    }
}

impl ToolCache {
    pub fn new(spec: &CacheSpec) -> Result<Self, (String, String)> {
        if spec.ttl.is_zero() {
            return Err(("cache.ttl".into(), "must be greater than zero".into()));
        }
        if !(0.0..1.0).contains(&spec.jitter) {
            return Err(("cache.jitter".into(), "must be in [0, 1)".into()));
        }
        if spec.max_entries == 0 || spec.max_bytes == 0 {
            return Err(("cache.max_entries".into(), "bounds must be positive".into()));
        }
        // One weight bounds both: each entry weighs at least max_bytes /
        // max_entries, so the cache can never hold more than max_entries.
        let floor = spec.max_bytes.div_ceil(spec.max_entries);
        let cache = moka::future::Cache::builder()
            .max_capacity(spec.max_bytes)
            .weigher(move |key: &String, value: &Outcome| {
                let body = value.result.as_ref().map_or(256, |(_, b)| b.len() as u64);
                let size = key.len() as u64 + body;
                u32::try_from(size.max(floor)).unwrap_or(u32::MAX)
            })
            .expire_after(JitteredTtl {
                ttl: spec.ttl,
                jitter: spec.jitter,
                negative_ttl: spec.negative_ttl,
            })
            .build();
        Ok(Self {
            cache,
            negative: spec.negative_ttl.is_some(),
        })
    }

    pub async fn get(&self, key: &str) -> Option<Outcome> {
        self.cache.get(key).await
    }

    /// Stores OK outcomes, and cacheable errors when negative caching is on.
    pub async fn put(&self, key: String, outcome: &Outcome) {
        let cacheable = match &outcome.result {
            Ok(_) => true,
            Err(CallError::UpstreamStatus { .. } | CallError::InvalidResponse { .. }) => {
                self.negative
            }
            Err(_) => false,
        };
        if cacheable {
            self.cache.insert(key, outcome.clone()).await;
        }
    }
}

type Flight = Shared<BoxFuture<'static, Outcome>>;
/// Flights by key: an id (so a landing removes only its own entry) and a weak
/// handle (so an abandoned flight is not kept alive by the map).
type Flights = HashMap<String, (u64, WeakShared<BoxFuture<'static, Outcome>>)>;

/// In-flight upstream work by key.
#[derive(Default)]
pub struct SingleFlight {
    flights: Mutex<Flights>,
    next_id: AtomicU64,
}

impl SingleFlight {
    /// Joins the flight for `key`, or starts one with `work`. The bool is
    /// true for the caller that started it.
    pub fn join(
        self: &Arc<Self>,
        key: String,
        work: BoxFuture<'static, Outcome>,
    ) -> (Flight, bool) {
        let mut flights = self.lock();
        if let Some((_, weak)) = flights.get(&key) {
            if let Some(flight) = weak.upgrade() {
                return (flight, false);
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let landing = Landing {
            flights: self.clone(),
            key: key.clone(),
            id,
        };
        let flight = async move {
            let _landing = landing;
            work.await
        }
        .boxed()
        .shared();
        let weak = flight.downgrade().expect("a flight not yet polled");
        flights.insert(key, (id, weak));
        (flight, true)
    }

    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Flights> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes a flight's entry when it completes or is abandoned.
struct Landing {
    flights: Arc<SingleFlight>,
    key: String,
    id: u64,
}

impl Drop for Landing {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            flights.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn ok(body: &'static str) -> Outcome {
        Outcome {
            result: Ok((200, Bytes::from_static(body.as_bytes()))),
            stats: FetchStats::default(),
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_flight() {
        let sf = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let gate = gate_rx.shared();
        let mut flights = Vec::new();
        for _ in 0..50 {
            let runs = runs.clone();
            let gate = gate.clone();
            let (flight, _) = sf.join(
                "k".into(),
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.await;
                    ok("{}")
                }
                .boxed(),
            );
            flights.push(flight);
        }
        gate_tx.send(()).unwrap();
        for f in flights {
            assert!(f.await.result.is_ok());
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.in_flight(), 0);
    }

    #[tokio::test]
    async fn abandoned_flight_is_dropped_and_replaced() {
        let sf = Arc::new(SingleFlight::default());
        let (first, leader) = sf.join("k".into(), futures::future::pending().boxed());
        assert!(leader);
        drop(first);
        assert_eq!(sf.in_flight(), 0);
        let (second, leader) = sf.join("k".into(), async { ok("1") }.boxed());
        assert!(leader);
        assert!(second.await.result.is_ok());
    }

    #[tokio::test]
    async fn cache_keeps_ok_and_skips_errors_without_negative_ttl() {
        let spec: CacheSpec = serde_yaml_ng::from_str("{ttl: 60s}").unwrap();
        let cache = ToolCache::new(&spec).unwrap();
        cache.put("a".into(), &ok("1")).await;
        let err = Outcome {
            result: Err(CallError::UpstreamStatus {
                status: 500,
                body: None,
                retry_after: None,
            }),
            stats: FetchStats::default(),
        };
        cache.put("b".into(), &err).await;
        assert!(cache.get("a").await.is_some());
        assert!(cache.get("b").await.is_none());
    }
}
