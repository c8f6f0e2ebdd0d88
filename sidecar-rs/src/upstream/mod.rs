//! Everything about reaching an upstream.
//!
//! | module | responsibility |
//! |---|---|
//! | [`client`] | a tool's sender: the client per port, redirects followed hop by hop with credentials kept to their origin, the size-capped body reader |
//! | [`http`] | the HTTP clients (hyper-util's pool, one per egress policy, port and version) on the guarded, TLS-capable connector |
//! | [`stream`] | a connection's byte stream: plain TCP inline, TLS boxed (a rustls session is 1 KiB) |
//! | [`multiplex`] | the one HTTP/2 connection to an origin set to `http: http2`, every call a stream on it, made again when it closes |
//! | [`origins`] | per-origin state (breaker, budget, slots, throttle) and the clients, kept across reloads |
//! | [`egress`] | which addresses and ports a tool may reach (IANA special-purpose registries, embedded IPv4), the guarded DNS resolver, where redirects may go |
//! | [`cache`] | per-tool response cache (moka) and single-flight |

pub mod cache;
pub mod client;
pub mod egress;
pub mod http;
pub mod multiplex;
pub mod origins;
pub mod stream;
