//! tandem's sidecar: executes every tool call of every agent in a pod.
//!
//! # Layout
//!
//! The folders follow a call from the socket to the upstream and back:
//!
//! ```text
//! server/ ── listeners, auth, the Dispatch stream, staged shutdown
//!    └ call/ ── one call's pipeline, top to bottom, each stage its own module
//!         ├ config/ ── the compiled tool it runs under (schemas, template, secrets)
//!         ├ policy/ ── rate limits (pod and fleet), breaker, retries, quotas
//!         └ upstream/ ── the HTTP client, per-origin state, egress guard, cache
//! ```
//!
//! | module | responsibility |
//! |---|---|
//! | [`server`] | binds listeners (TCP with auth, unix socket, health-only), serves Dispatcher + health + reflection, shuts down in stages |
//! | [`server::dispatch`] | the gRPC service: admission (in-flight bounds, draining), one task per Dispatch stream, exactly one result per call |
//! | [`server::auth`], [`server::drain`] | the bearer-token interceptor for TCP; the shutdown stages (draining, then abort) |
//! | [`call`] | the pipeline of one call; [`call::Executor`] reads top to bottom: input → shared (cache, single-flight) → limits → attempts → response → select |
//! | [`config`] | `tools.yaml` ([`config::spec`]) compiled into a [`config::registry::Registry`]: schemas, request templates, secrets and their redaction; hot reload |
//! | [`policy`] | rate limits (pod: governor and token buckets; fleet: Redis leases), circuit breaker, retry policy and budget, upstream quota signals |
//! | [`upstream`] | the HTTP client and capped body reader, per-origin state kept across reloads, the egress guard, the response cache and single-flight |
//! | [`json`] | depth scan, canonical JSON (cache keys), `select`; `document` + `sonic`: the response hot path (one sonic-rs parse, validated in place) |
//! | [`error`] | `ConfigError`, `CallError`, and the one mapping from errors to results |
//! | [`metrics`] | Prometheus metrics and their `/metrics` endpoint |
//! | [`telemetry`] | logs, and OTLP spans per call joined to the caller's trace |
//! | [`cli`] | flags |
//! | [`pb`] | code generated from `proto/` |
#![forbid(unsafe_code)]

pub mod call;
pub mod cli;
pub mod config;
pub mod error;
pub mod json;
pub mod metrics;
pub mod pb;
pub mod policy;
pub mod server;
pub mod telemetry;
pub mod upstream;

pub use server::{run, ListenAddr, ServerConfig};
