//! Everything about reaching an upstream.
//!
//! | module | responsibility |
//! |---|---|
//! | [`client`] | the HTTP client (reqwest) and the size-capped body reader |
//! | [`origins`] | per-origin state (breaker, budget, slots, throttle) and the clients, kept across reloads |
//! | [`egress`] | which addresses a tool may reach; the guarded DNS resolver and redirect policy |
//! | [`cache`] | per-tool response cache (moka) and single-flight |

pub mod cache;
pub mod client;
pub mod egress;
pub mod origins;
