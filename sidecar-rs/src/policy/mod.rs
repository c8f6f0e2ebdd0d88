//! The policies a call meets between its checked input and the upstream.
//!
//! | module | responsibility |
//! |---|---|
//! | [`ratelimit`] | a tool's rate limits: keyed by tool, agent, tenant or upstream; pod or fleet scope; calls or LLM tokens; reject, wait or shadow |
//! | [`bucket`] | a token bucket that can go into debt, and per-key buckets that are forgotten when idle |
//! | [`fleet`] | Redis: leased fleet buckets ([`fleet::lease`]), live-sidecar presence, broadcast upstream throttles |
//! | [`breaker`] | circuit breaker per upstream origin |
//! | [`window`] | the breaker's rolling-window counters |
//! | [`retry`] | retry policy, jittered backoff, the retry budget |
//! | [`quota`] | reading an upstream's announced quota and waits (`x-ratelimit-*`, `Retry-After`) |

pub mod breaker;
pub mod bucket;
pub mod fleet;
pub mod quota;
pub mod ratelimit;
pub mod retry;
pub mod window;
