//! State shared by every tool that calls one upstream origin (circuit
//! breaker, retry budget, concurrency slots) and the HTTP clients, one per
//! egress policy. Both outlive config reloads: an origin's breaker keeps its
//! memory of recent failures unless its policy changes, and connection pools
//! stay warm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Semaphore;

use crate::breaker::CircuitBreaker;
use crate::config::UpstreamSpec;
use crate::egress::EgressPolicy;
use crate::metrics::Metrics;
use crate::retry::RetryBudget;
use crate::upstream::{Upstream, UpstreamOptions};

/// Policies and live state for one origin (`scheme://host:port`).
#[derive(Debug)]
pub struct UpstreamState {
    pub origin: String,
    spec: UpstreamSpec,
    pub breaker: CircuitBreaker,
    pub budget: RetryBudget,
    /// Requests in flight to this origin.
    pub slots: Arc<Semaphore>,
}

/// Every origin's state and every client, by key.
pub struct Upstreams {
    metrics: Metrics,
    options: UpstreamOptions,
    states: Mutex<HashMap<String, Arc<UpstreamState>>>,
    clients: Mutex<HashMap<(EgressPolicy, u8), Upstream>>,
}

impl Upstreams {
    pub fn new(options: UpstreamOptions, metrics: Metrics) -> Self {
        Self {
            metrics,
            options,
            states: Mutex::default(),
            clients: Mutex::default(),
        }
    }

    /// The state for `origin` under `spec`, reusing the current one when its
    /// policy is unchanged.
    pub fn state(&self, origin: &str, spec: &UpstreamSpec) -> Arc<UpstreamState> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(origin) {
            if &state.spec == spec {
                return state.clone();
            }
        }
        let gauge = self.metrics.circuit_state.with_label_values(&[origin]);
        let state = Arc::new(UpstreamState {
            origin: origin.to_owned(),
            breaker: CircuitBreaker::new(origin.to_owned(), spec.circuit_breaker.clone(), gauge),
            budget: RetryBudget::new(spec.retry_budget.clone()),
            slots: Arc::new(Semaphore::new(spec.max_concurrency)),
            spec: spec.clone(),
        });
        states.insert(origin.to_owned(), state.clone());
        state
    }

    /// The client for tools with this egress policy and redirect limit.
    pub fn client(&self, policy: &EgressPolicy, redirects: u8) -> Result<Upstream, reqwest::Error> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let key = (policy.clone(), redirects);
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client = Upstream::new(&self.options, policy.clone(), redirects)?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}
