//! Everything about reaching an upstream.
//!
//! | module | responsibility |
//! |---|---|
//! | [`client`] | the HTTP clients (reqwest, one per egress policy and port), redirects followed hop by hop with credentials kept to their origin, the size-capped body reader |
//! | [`origins`] | per-origin state (breaker, budget, slots, throttle) and the clients, kept across reloads |
//! | [`egress`] | which addresses and ports a tool may reach (IANA special-purpose registries, embedded IPv4), the guarded DNS resolver, where redirects may go |
//! | [`cache`] | per-tool response cache (moka) and single-flight |

pub mod cache;
pub mod client;
pub mod egress;
pub mod origins;
